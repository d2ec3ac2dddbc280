"""`python -m recipes.export ckpt_path=PATH [export=onnx|program|all|dcz]`: export an existing checkpoint's
shipped net (its task's), verified against it on the test set, to <its run dir>/export/ (or out_dir=DIR)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from recipes.assembly.restore import rebuild
from recipes.errors import RecipeError
from recipes.runtime.guard import guarded, run_main
from recipes.stages.results import strict_json
from recipes.stages.shipping import export_shipped

__all__ = ["export", "main"]


def export(cfg: DictConfig) -> dict[str, Any]:
    if not cfg.export.formats:
        raise RecipeError("export=none exports nothing: pass export=onnx, export=program, export=all or export=dcz")
    _, datamodule, module, _ = rebuild(cfg.ckpt_path, trusted=cfg.trusted_targets)
    datamodule.setup("test")
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path(cfg.ckpt_path).resolve().parent.parent / "export"
    report = export_shipped(cfg.export, module, datamodule, out_dir)
    (out_dir / "report.json").write_text(strict_json(report, indent=2) + "\n")
    print(strict_json(report))
    print(f"export dir: {out_dir}")
    return report


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="export_checkpoint")
def _hydra_main(cfg: DictConfig) -> None:
    guarded(export, cfg)


def main() -> None:
    run_main(_hydra_main)


if __name__ == "__main__":
    main()
