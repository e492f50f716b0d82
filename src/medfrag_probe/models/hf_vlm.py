"""Base adapter for transformers vision-language models (vision tower -> projector -> language model)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .base import Adapter, Point, PointBatch, find_module
from .hf_common import LM_CANDIDATES, lm_points, load_pretrained, vision_only_config, vit_tower_points
from .prefix import (
    PrefixMemo,
    SharedBatch,
    accepts,
    branch,
    cache_argument,
    laid_width,
    positions,
    prefill,
    prefix_lengths,
)

PROJECTOR_ORDER = 900


@dataclass
class HFVLMAdapter(Adapter):
    """A `*ForConditionalGeneration` VLM; subclasses name the class, the tower family and what the LM reads."""

    model_class = ""
    tower_family = "clip"
    can_generate = True
    share_prefix = True  # one image asked several prompts: run the image and the common chat prefix once
    answer_token_type = 0  # token_type_ids of an answer token (PaliGemma: 1, the suffix of its prefix LM)
    _prefix_memo = None  # set inside `reusing_prefixes`

    @classmethod
    def load(cls, target: str, *, spec: str, vision_only: bool, dtype: torch.dtype, trust_remote_code: bool = False):
        """Load model and processor from a hub id or checkpoint directory."""
        import transformers

        config = transformers.AutoConfig.from_pretrained(target, trust_remote_code=trust_remote_code)
        lm_layers = config.text_config.num_hidden_layers
        if vision_only:
            config = vision_only_config(config)
        klass = getattr(transformers, cls.model_class)
        model = load_pretrained(klass, target, config=config, dtype=dtype, trust_remote_code=trust_remote_code,
                                vision_only=vision_only)
        processor = transformers.AutoProcessor.from_pretrained(target, trust_remote_code=trust_remote_code)
        adapter = cls(spec=spec, model=model, processor=processor, loaded="vision" if vision_only else "full")
        adapter.info["lm_layers"] = lm_layers
        return adapter

    def __post_init__(self):
        self.base = find_module(self.model, ("model", ""), what="base model")
        self.tower, self.projector = self.find_parts()
        points = self.vision_points()
        points.append(self.projector_point())
        if self.loaded == "full":
            points += lm_points(find_module(self.model, LM_CANDIDATES, what="language model"))
        self.points = {p.name: p for p in points}
        self.reads_point = self.find_reads_point()
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"

    def find_parts(self):
        """The vision tower and the multimodal projector modules."""
        tower = find_module(self.model, ("model.vision_tower", "vision_tower"), what="vision tower")
        projector = find_module(self.model, ("model.multi_modal_projector", "multi_modal_projector"),
                                what="multimodal projector")
        return tower, projector

    def projector_point(self) -> Point:
        """The projector's output: image tokens in the language model's space."""
        return Point("projector", self.projector, "seq", order=PROJECTOR_ORDER, stage="projector")

    def vision_points(self) -> list[Point]:
        """Hook points of the vision tower."""
        return vit_tower_points(self.tower, family=self.tower_family)

    def find_reads_point(self) -> str:
        """The vision point whose tokens the projector receives."""
        return "vision.post"

    def components(self):
        return {"vision": self.tower, "projector": self.projector}

    @property
    def image_token_id(self) -> int | None:
        """Token id marking image positions in `input_ids`."""
        config = self.model.config
        for key in ("image_token_id", "image_token_index"):
            value = getattr(config, key, None)
            if isinstance(value, int):
                return value
        return None

    def prepare(self, images, prompt=None):
        images = self.fit_images(images)
        if prompt is None:
            return dict(self.processor.image_processor(images=images, return_tensors="pt"))
        text = self.format_prompt(prompt)
        return dict(self.processor(text=[text] * len(images), images=self.images_arg(images),
                                   return_tensors="pt", padding=True))

    def chat_inputs(self, prompts, images=None):
        if images is None:
            texts = [self.format_prompt(p, image=False) for p in prompts]
            return dict(self.processor(text=texts, return_tensors="pt", padding=True))
        if len(images) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
        texts = [self.format_prompt(p) for p in prompts]
        return dict(self.processor(text=texts, images=self.images_arg(self.fit_images(images)), return_tensors="pt",
                                   padding=True))

    @torch.inference_mode()
    def generate(self, inputs, *, max_new_tokens):
        tokenizer = self.processor.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        shared = self.shared(inputs, new_tokens=max_new_tokens)
        if shared is not None:
            inputs = {**shared.inputs, cache_argument(self.model): shared.cache}
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=pad, temperature=None, top_p=None, top_k=None)
        return tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def shared(self, inputs, *, new_tokens: int = 1) -> SharedBatch | None:
        """The batch re-laid around its rows' prefixes (chat start and image), each distinct one run once; None when
        a row has none, sharing is off, or the rows and `new_tokens` could reach past a sliding attention window
        (the padding between prefix and question would take places in the window); see `models.prefix`."""
        if not self.share_prefix:
            return None
        lengths = prefix_lengths(inputs, self.image_token_id)
        if lengths is None:
            return None
        window = getattr(self.model.config.get_text_config(), "sliding_window", None)
        if isinstance(window, int) and laid_width(inputs, lengths) + new_tokens > window:
            return None
        return prefill(self.model, inputs, lengths, memo=self._prefix_memo)

    @contextmanager
    def reusing_prefixes(self):
        """Within the block, the prefixes (chat start and image) a batch shares with the previous batch are taken
        from that batch's cache instead of being run again. Only for a block in which weights and hooks stay put."""
        previous, self._prefix_memo = self._prefix_memo, PrefixMemo()
        try:
            yield self
        finally:
            self._prefix_memo = previous

    @torch.inference_mode()
    def option_scores(self, inputs, options: list[list[str]], *, variants: bool = True) -> list[list[float]]:
        """Scored answers: per row, the probability that the answer starts with each option (no generation, no
        parsing), normalised over that row's options.

        An option's mass is summed over the distinct token sequences of its surface forms (as written, lower case,
        capitalised, each with and without a leading space) unless `variants=False`, which keeps the option as
        written, without a leading space (what a constrained greedy decoder picks among). A form is scored by its
        first token, and by its second where the first begins other forms too (a bare space token, or "N" of both
        "No" and "Normal"): P(t1) P(t2 | t1), from one more forward pass per such first token."""
        original = {k: v for k, v in inputs.items() if k != "labels"}  # PaliGemma's processor adds labels
        # rows usually share their options: tokenise each distinct option once
        known = {o: self.option_sequences(o, variants=variants) for o in {o for row in options for o in row}}
        forms = [[known[o] for o in row] for row in options]
        shared = sorted({seq[0] for row in forms for opt in row for seq in opt
                         if len(seq) > 1 and self._shared_first(seq[0], row)})
        first, second = self._answer_probs(original, then=shared)
        out = []
        for row, row_forms in enumerate(forms):
            mass = []
            for option in row_forms:
                total = 0.0
                for seq in option:
                    p = float(first[row, seq[0]])
                    if len(seq) > 1 and seq[0] in second:
                        p *= float(second[seq[0]][row, seq[1]])
                    total += p
                mass.append(total)
            whole = sum(mass)
            out.append([m / whole if whole > 0 else 1 / len(mass) for m in mass])
        return out

    @staticmethod
    def _shared_first(token: int, row_forms: list[list[tuple[int, ...]]]) -> bool:
        """Whether `token` begins forms of more than one option, or a longer form beside a one-token one."""
        owners = [k for k, option in enumerate(row_forms) if any(seq[0] == token for seq in option)]
        lengths = {len(seq) > 1 for option in row_forms for seq in option if seq[0] == token}
        return len(owners) > 1 or len(lengths) > 1

    def _answer_probs(self, inputs: dict, *, then: list[int] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """(rows, vocab) next-token probabilities at the answer position, and for each token `t` of `then` those one
        token later, with `t` appended to every row. Where the batch shares its prefixes, each `t` is a one-token
        pass over the answer position's key/value cache; otherwise the whole batch runs again with `t` appended."""
        shared = self.shared(inputs, new_tokens=1 + bool(then))
        if shared is None:
            first = self._last_probs(dict(inputs))
            return first, {t: self._last_probs(self._grown(inputs, t)) for t in then}
        start = shared.start
        ahead = {k: v[:, start:] for k, v in shared.inputs.items() if k != "attention_mask"}
        mask = shared.inputs["attention_mask"]
        step = {**ahead, "attention_mask": mask, "position_ids": shared.positions()[:, start:],
                cache_argument(self.model): shared.cache}
        out = self.model(**self._keep_last(step))
        first = torch.softmax(out.logits[:, -1, :].float(), dim=-1).cpu()
        if not then:
            return first, {}
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None) or shared.cache
        mask = torch.cat([mask, mask.new_ones((len(mask), 1))], dim=1)
        tokenwise = [k for k, v in ahead.items() if torch.is_tensor(v) and v.shape == ahead["input_ids"].shape]
        second = {}
        position = positions(mask)[:, -1:]
        for t in then:
            one = {k: torch.full_like(ahead[k][:, -1:], self._fill(k, t)) for k in tokenwise}
            second[t] = self._last_probs({**one, "attention_mask": mask, "position_ids": position,
                                          cache_argument(self.model): branch(cache)})
        return first, second

    def _grown(self, inputs: dict, then: int) -> dict:
        """The inputs with `then` appended to every row (per-token tensors grow by one column)."""
        ids = inputs["input_ids"]
        return {k: torch.cat([v, torch.full((len(v), 1), self._fill(k, then), dtype=v.dtype, device=v.device)], 1)
                if torch.is_tensor(v) and v.shape == ids.shape else v for k, v in inputs.items()}

    def _fill(self, key: str, then: int) -> int:
        """A per-token tensor's value at an appended answer token."""
        return {"input_ids": then, "attention_mask": 1, "token_type_ids": self.answer_token_type}.get(key, 0)

    def _keep_last(self, inputs: dict) -> dict:
        if accepts(self.model, "logits_to_keep"):
            inputs = {**inputs, "logits_to_keep": 1}  # only the answer position's logits are read
        return inputs

    def _last_probs(self, inputs: dict) -> torch.Tensor:
        logits = self.model(**self._keep_last(inputs)).logits[:, -1, :].float()  # left padding: last position answers
        return torch.softmax(logits, dim=-1).cpu()

    def option_sequences(self, option: str, *, variants: bool = True) -> list[tuple[int, ...]]:
        """The distinct token sequences (at most two tokens) of the surface forms of `option`."""
        tokenizer = self.processor.tokenizer
        forms = {option}
        if variants:
            forms |= {option.lower(), option.capitalize()}
            forms |= {" " + f for f in forms}
        sequences = {tuple(ids[:2]) for ids in (tokenizer.encode(f, add_special_tokens=False) for f in sorted(forms))
                     if ids}
        return sorted(sequences)

    def first_tokens(self, option: str, *, variants: bool = True) -> set[int]:
        """Ids of the first token of each surface form of `option`."""
        return {seq[0] for seq in self.option_sequences(option, variants=variants)}

    def fit_images(self, images):
        """Images as this model's own preprocessing expects them before the processor (e.g. padded square)."""
        return images

    def images_arg(self, images):
        """How this processor wants a batch of one image per prompt."""
        return images

    def format_prompt(self, prompt: str, *, image: bool = True) -> str:
        """The processor's chat template around one image (or none) and `prompt`."""
        content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": prompt}]
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def image_inputs(self, inputs: dict) -> dict:
        """The subset of inputs the vision tower and projector take."""
        return {"pixel_values": inputs["pixel_values"]}

    def forward(self, inputs, stage):
        if stage == "vision":
            self.tower(**self.image_inputs(inputs))
        elif stage == "projector":
            self.base.get_image_features(**self.image_inputs(inputs))
        else:
            self.base(**inputs)
        return {}

    def point_batch(self, inputs) -> PointBatch:
        batch = PointBatch(size=len(inputs["pixel_values"]))
        if "input_ids" in inputs:
            batch.size = len(inputs["input_ids"])
            batch.image_mask = inputs["input_ids"] == self.image_token_id
            batch.attention_mask = inputs.get("attention_mask")
        return batch
