"""Trained models from Python: :func:`load_run` opens a run, checkpoint or export directory in one call.

::

    from polymodal import load_run

    run = load_run("runs/llm-tiny")
    print(run.generate("Return the number of", max_new_tokens=40, temperature=0.8, top_p=0.95))

The result holds the model (eval mode, on ``device``), the run's resolved config and the tokenizers the run
carries (``tokenizers/``, see :mod:`polymodal.tokenizers.carried`). Its class depends on the model: a
:class:`LanguageModelRun` for the engine's language model, the family's own class for a family model (4M:
:class:`polymodal.families.fourm.api.FourMRun`, which its module names ``RUN_CLASS``), a plain :class:`TrainedRun`
otherwise.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # importing this module stays cheap: `polymodal generate --help` asks it for the family
    import torch
    from omegaconf import DictConfig
    from torch import nn

FAMILIES_PACKAGE = "polymodal.families"


@dataclass
class TrainedRun:
    """A trained model with what it needs to be used: its config and tokenizers (by name)."""

    path: Path
    model: nn.Module
    config: DictConfig
    tokenizers: dict[str, Any]
    device: torch.device

    def tokenizer(self, name: str) -> Any:
        """The carried tokenizer ``name``, or an error that says how to give the run one."""
        if name not in self.tokenizers:
            raise KeyError(
                f"{self.path} carries no tokenizer {name!r} (it has {sorted(self.tokenizers)}); runs started before "
                f"tokenizers were carried can be given one: run.tokenizers[{name!r}] = ..."
            )
        return self.tokenizers[name]


class LanguageModelRun(TrainedRun):
    """A trained :class:`~polymodal.models.llm.CausalLM` with its byte-level BPE tokenizer."""

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_k: int | float = 0,
        top_p: float = 0.0,
        seed: int = 0,
    ) -> str:
        """``prompt`` continued by up to ``max_new_tokens`` tokens (the text after the prompt, cut at the end of
        the document). ``temperature`` 0 is greedy; ``top_k`` / ``top_p`` filter as usual; ``seed`` makes it
        repeatable."""
        import torch

        from polymodal.tokenizers.carried import TEXT
        from polymodal.tokenizers.text.bpe import EOS_ID

        tokenizer = self.tokenizer(TEXT)
        ids = tokenizer.encode(prompt).ids
        if not ids:
            raise ValueError("the prompt is empty: give the model at least one token to continue")
        input_ids = torch.tensor([ids], device=self.device)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        tokens = self.model.generate(input_ids, max_new_tokens, temperature, top_k, top_p, generator, stop_id=EOS_ID)
        new = tokens[0, len(ids) :].tolist()
        return tokenizer.decode(new[: new.index(EOS_ID)] if EOS_ID in new else new)


def load_run(path: str | Path, device: str | torch.device = "cpu", initial: bool = False) -> TrainedRun:
    """Open a run directory (its newest checkpoint), a checkpoint or an export for use (see the module docstring);
    ``initial``: with the weights the run started from (a random-initialisation baseline) instead."""
    import torch
    from omegaconf import OmegaConf
    from torch import nn

    from polymodal.checkpoint.weights import load_trained_model
    from polymodal.models.llm import CausalLM
    from polymodal.tokenizers.carried import load_carried_tokenizers

    path = Path(path)
    model, config_yaml = load_trained_model(path, initial)
    device = torch.device(device)
    tokenizers = {
        name: tokenizer.to(device).eval() if isinstance(tokenizer, nn.Module) else tokenizer
        for name, tokenizer in load_carried_tokenizers(path).items()
    }
    config = OmegaConf.create(config_yaml)
    family = family_of_target(config.model.get("_target_"))
    if family is not None:
        run_class = importlib.import_module(f"{FAMILIES_PACKAGE}.{family}.api").RUN_CLASS
    else:
        run_class = LanguageModelRun if isinstance(model, CausalLM) else TrainedRun
    return run_class(path, model.to(device).eval(), config, tokenizers, device)


def family_of_target(target: Any) -> str | None:
    """The family a model ``_target_`` belongs to (old paths mapped first), or None for an engine model."""
    from polymodal.config.aliases import current_target

    if not isinstance(target, str):
        return None
    target = current_target(target)
    prefix = FAMILIES_PACKAGE + "."
    return target[len(prefix) :].split(".", 1)[0] if target.startswith(prefix) else None
