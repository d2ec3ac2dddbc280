"""`python -m recipes.generate ckpt_path=PATH ...`: samples of a generative checkpoint, by its task.

- A GAN (`recipe=gan`): `num_samples=N [label=K] out=FILE.png` draws from its generator and writes one grid
  image (one row per class when the GAN is conditional and no label is asked for).
- A language model (`task=lm`): `prompt="The assert statement" max_new_tokens=200 temperature=0.8
  top_k=20 out=FILE.txt` continues the prompt symbol by symbol, prints the text and writes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from modules.gan import GanModule
from modules.gan_pictures import sample_grid, save_grid
from modules.language_model import LanguageModel
from recipes.assembly.restore import rebuild
from recipes.errors import RecipeError
from recipes.runtime.guard import guarded, run_main

__all__ = ["generate", "generate_images", "generate_text", "main"]


def generate(cfg: DictConfig) -> dict[str, Any]:
    _, datamodule, module, choices = rebuild(cfg.ckpt_path, trusted=cfg.trusted_targets)
    if isinstance(module, GanModule):
        return generate_images(cfg, module)
    if isinstance(module, LanguageModel):
        return generate_text(cfg, module, datamodule)
    raise RecipeError(
        f"ckpt_path={cfg.ckpt_path} holds a task={choices.get('task')} model, not a GAN or a language model: "
        f"pass a checkpoint of recipe=gan (task=gan) or recipe=lm (task=lm)"
    )


def generate_images(cfg: DictConfig, module: GanModule) -> dict[str, Any]:
    """A grid of the GAN's samples, written as one PNG."""
    out = Path(cfg.out or "samples.png")
    if cfg.num_samples < 1:
        raise RecipeError(f"num_samples={cfg.num_samples} must be >= 1, e.g. num_samples=100")
    if out.suffix.lower() != ".png":
        raise RecipeError(f"out={cfg.out} must name a .png file for a GAN's samples, e.g. out=samples.png")
    z, labels = module.latent_batch(cfg.num_samples, cfg.seed)
    per_row = min(cfg.num_samples, 10)
    if cfg.label is not None:
        if not module.conditional:
            raise RecipeError(
                f"label={cfg.label}: this GAN is not conditional (trained with task.conditional=false); "
                f"drop label, or train with task.conditional=true"
            )
        if not 0 <= cfg.label < module.num_classes:
            raise RecipeError(f"label={cfg.label} is not a class of this GAN: pick 0..{module.num_classes - 1}")
        labels = torch.full_like(labels, cfg.label)
    elif module.conditional:  # labels cycle through the classes: sorted, each row is one class
        labels = labels.sort(stable=True).values
        per_row = max(1, cfg.num_samples // module.num_classes)
    images = module.sample(z, labels)
    save_grid(sample_grid(images, per_row), out)
    print(f"wrote {len(images)} samples to {out}")
    return {"out": str(out), "num_samples": len(images)}


def generate_text(cfg: DictConfig, module: LanguageModel, datamodule: Any) -> dict[str, Any]:
    """The prompt continued by `max_new_tokens` sampled symbols, printed and written as UTF-8 text."""
    out = Path(cfg.out or "samples.txt")
    if cfg.max_new_tokens < 1:
        raise RecipeError(f"max_new_tokens={cfg.max_new_tokens} must be >= 1, e.g. max_new_tokens=200")
    if not cfg.temperature > 0:
        raise RecipeError(f"temperature={cfg.temperature} must be > 0, e.g. temperature=0.8 (1: the model's own)")
    if cfg.top_k is not None and cfg.top_k < 1:
        raise RecipeError(f"top_k={cfg.top_k} must be >= 1, or null for every symbol")
    prompt, vocab = str(cfg.prompt), datamodule.vocab
    if not prompt:
        raise RecipeError('prompt is empty: give the text to continue, e.g. prompt="The assert statement"')
    context = getattr(module.shipped_net, "max_context", None)
    if context is not None and len(prompt) > context:
        raise RecipeError(
            f"prompt of {len(prompt)} symbols is longer than this transformer's context of {context} "
            f"(its data.seq_len): shorten the prompt"
        )
    unknown = vocab.unknown(prompt)
    if unknown:
        print(f"prompt: {unknown} of {len(prompt)} symbols are not in the model's vocabulary; they read as <unk>")
    generator = torch.Generator().manual_seed(cfg.seed)
    symbols = module.sample(vocab.encode(prompt), cfg.max_new_tokens, cfg.temperature, cfg.top_k, generator)
    text = prompt + vocab.decode(symbols[len(prompt) :].tolist())
    out.write_text(text + "\n", encoding="utf-8")
    print(text)
    print(f"wrote {len(text)} characters to {out}")
    return {"out": str(out), "text": text}


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="generate")
def _hydra_main(cfg: DictConfig) -> None:
    guarded(generate, cfg)


def main() -> None:
    run_main(_hydra_main)


if __name__ == "__main__":
    main()
