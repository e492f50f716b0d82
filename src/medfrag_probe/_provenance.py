"""What produced a result: versions of every scientific dependency and the device, recorded in caches, VQA
summaries and study `run.json` files so that a number can be traced to the software and hardware behind it."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("torch", "torchvision", "transformers", "open_clip_torch", "timm", "numpy", "scikit-learn", "scipy",
            "h5py", "safetensors", "pillow", "pydicom", "nibabel")


def versions() -> dict[str, str]:
    """{package: version} of the installed scientific dependencies (absent optional ones are left out), the
    toolkit itself and Python."""
    from . import __version__

    found = {"medfrag_probe": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def device_info(device: str | None = None) -> dict[str, str]:
    """The compute device: `cpu`, or the CUDA device's name, capability and the CUDA / cuDNN versions."""
    import torch

    info = {"device": str(device or "cpu"), "platform": platform.platform(),
            "cpu_threads": str(torch.get_num_threads())}
    if torch.cuda.is_available() and str(device or "").startswith("cuda"):
        index = torch.device(device).index or 0
        info.update(gpu=torch.cuda.get_device_name(index), cuda=str(torch.version.cuda),
                    capability=".".join(map(str, torch.cuda.get_device_capability(index))),
                    cudnn=str(torch.backends.cudnn.version()))
    return info
