"""`python -m recipes.generate ckpt_path=PATH num_samples=N [label=K] out=FILE.png`: draw samples
from a GAN checkpoint's generator and write them as one grid image (one row per class when the GAN
is conditional and no label is asked for)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from modules.gan import GanModule
from modules.gan_pictures import sample_grid, save_grid
from recipes.assembly.restore import rebuild
from recipes.errors import RecipeError
from recipes.runtime.guard import guarded, run_main

__all__ = ["generate", "main"]


def generate(cfg: DictConfig) -> dict[str, Any]:
    if cfg.num_samples < 1:
        raise RecipeError(f"num_samples={cfg.num_samples} must be >= 1, e.g. num_samples=100")
    if not str(cfg.out).lower().endswith(".png"):
        raise RecipeError(f"out={cfg.out} must name a .png file, e.g. out=samples.png")
    _, _, module, choices = rebuild(cfg.ckpt_path, trusted=cfg.trusted_targets)
    if not isinstance(module, GanModule):
        raise RecipeError(
            f"ckpt_path={cfg.ckpt_path} holds a task={choices.get('task')} model, not a GAN: "
            f"pass a checkpoint of recipe=gan (task=gan)"
        )
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
    save_grid(sample_grid(images, per_row), Path(cfg.out))
    print(f"wrote {len(images)} samples to {cfg.out}")
    return {"out": str(cfg.out), "num_samples": len(images)}


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="generate")
def _hydra_main(cfg: DictConfig) -> None:
    guarded(generate, cfg)


def main() -> None:
    run_main(_hydra_main)


if __name__ == "__main__":
    main()
