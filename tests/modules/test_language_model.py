"""The language model (task=lm, recipe=lm, recipe=lm_finetune) through its entry points, on tiny settings:
it trains and reports bpc and perplexity, its checkpoint records the vocabulary, it resumes exactly,
recipes.evaluate and `LanguageModel.load_from_checkpoint` give back what it trained, recipes.generate
continues a prompt, a fine-tune reads new text with the checkpoint's vocabulary; and the bad inputs of a
sequence run are refused in one line, exit 2, with no run dir left."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from modules.language_model import LanguageModel
from recipes.assembly.restore import rebuild
from recipes.data.text import PyTextDataModule
from tests.helpers.in_process import run_module_in_process
from tests.helpers.runs import assert_clean_failure, train_in_process, train_ok, train_ok_in_process

# A 32-wide LSTM on 32-symbol windows: a real run in a few seconds. T_max pinned so that a run cut short
# and resumed follows the same learning-rate schedule as one straight run.
SHORT = (
    "data.seq_len=32",
    "data.batch_size=16",
    "trainer.limit_train_batches=20",
    "trainer.limit_val_batches=3",
    "trainer.limit_test_batches=3",
)
LSTM = ("model.hidden=32", "model.embed=16")
TINY = (
    "recipe=lm",
    *SHORT,
    *LSTM,
    "task.optimizer.lr=0.01",
    "task.scheduler.T_max=3",
)
EPOCHS = 3
FRENCH = "le café coûte 3 € au comptoir, le thé 2 €.\n" * 80  # é, û and € are not in pytext's vocabulary


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished three-epoch tiny recipe=lm run, which the tests below only read."""
    run_dir = tmp_path_factory.mktemp("lm") / "run"
    train_ok_in_process(run_dir, *TINY, f"trainer.max_epochs={EPOCHS}")
    return run_dir


def results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text())


def shipped(run_dir: Path) -> Path:
    return run_dir / results(run_dir)["checkpoint"]


def generate(ckpt: Path, *overrides: str):
    return run_module_in_process("recipes.generate", f"ckpt_path={ckpt}", *overrides)


def text_file(tmp_path: Path, text: str, name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- training, resuming, evaluating ---------------------------------------------------------------


def test_lm_reports_bpc_and_perplexity_and_learns(lm_run: Path) -> None:
    report = results(lm_run)
    metrics = report["metrics"]
    assert report["task"] == "lm" and report["monitor"]["metric"] == "val/bpc"
    assert set(metrics) == {"test/loss", "test/bpc", "test/ppl"}
    nats = metrics["test/loss"]
    assert metrics["test/bpc"] == pytest.approx(nats / math.log(2), rel=1e-6)
    assert metrics["test/ppl"] == pytest.approx(math.exp(nats), rel=1e-5)
    assert metrics["test/ppl"] == pytest.approx(2 ** metrics["test/bpc"], rel=1e-5)  # ppl = e^nats = 2^bpc
    with open(lm_run / "csv" / "metrics.csv") as f:
        val = [float(row["val/bpc"]) for row in csv.DictReader(f) if row.get("val/bpc")]
    assert len(val) == EPOCHS and all(b < a for a, b in zip(val, val[1:])), val
    vocab_size = len(PyTextDataModule(seq_len=32).vocab)
    assert val[-1] < math.log2(vocab_size) - 1.0, val  # well under a uniform guess over the symbols


def test_checkpoint_records_the_vocabulary(lm_run: Path) -> None:
    ckpt = torch.load(shipped(lm_run), map_location="cpu", weights_only=True)
    data = ckpt["recipe"]["data"]
    vocab = PyTextDataModule(seq_len=32).vocab.to_list()
    assert data == {"input_shape": [32], "num_classes": len(vocab), "vocab": vocab}
    assert ckpt["state_dict"]["net.head.weight"].shape[0] == len(vocab)


def test_resume_continues_exactly(lm_run: Path, tmp_path: Path) -> None:
    """Two epochs, then `ckpt_path=last` to the third: the weights of one straight three-epoch run."""
    run_dir = tmp_path / "run"
    train_ok_in_process(run_dir, *TINY, f"trainer.max_epochs={EPOCHS - 1}")
    resumed = train_ok_in_process(run_dir, *TINY, f"trainer.max_epochs={EPOCHS}", "ckpt_path=last")
    a = torch.load(lm_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["epoch"] == b["epoch"] == EPOCHS - 1 and a["global_step"] == b["global_step"] == EPOCHS * 20
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert resumed["metrics"] == results(lm_run)["metrics"]


def test_evaluate_and_load_from_checkpoint_give_back_the_trained_model(lm_run: Path) -> None:
    ckpt = shipped(lm_run)
    proc = run_module_in_process("recipes.evaluate", f"ckpt_path={ckpt}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == results(lm_run)["metrics"]  # exactly
    loaded = LanguageModel.load_from_checkpoint(ckpt, weights_only=True).eval()
    _, datamodule, module, _ = rebuild(str(ckpt))
    datamodule.setup("test")
    x, _ = next(iter(datamodule.test_dataloader()))
    with torch.no_grad():
        assert torch.equal(loaded(x), module.eval().shipped_net(x))


# --- generating ---------------------------------------------------------------------------------


def test_generate_continues_the_prompt_deterministically(lm_run: Path, tmp_path: Path) -> None:
    ckpt = shipped(lm_run)
    texts = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path / f"{name}.txt"
        proc = generate(ckpt, "prompt='The assert'", "max_new_tokens=40", f"seed={seed}", f"out={out}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        text = out.read_text(encoding="utf-8")
        assert text.startswith("The assert") and len(text) == len("The assert") + 40 + 1  # and a newline
        assert text.rstrip("\n") in proc.stdout and f"wrote {len(text) - 1} characters to {out}" in proc.stdout
        assert "not in the model's vocabulary" not in proc.stdout
        texts.append(text)
    assert texts[0] == texts[1] and texts[0] != texts[2]


def test_generate_counts_unknown_prompt_symbols(lm_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "unk.txt"
    proc = generate(shipped(lm_run), "prompt='un café à 3 €'", "max_new_tokens=5", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "prompt: 3 of 13 symbols are not in the model's vocabulary; they read as <unk>" in proc.stdout
    assert out.read_text(encoding="utf-8").startswith("un café à 3 €")  # the prompt as given


@pytest.mark.parametrize(
    "override, message",
    [
        ("max_new_tokens=0", "max_new_tokens=0 must be >= 1"),
        ("temperature=0", "temperature=0 must be > 0"),
        ("top_k=0", "top_k=0 must be >= 1"),
        ("prompt=''", "prompt is empty"),
    ],
)
def test_generate_refuses_bad_sampling_knobs(lm_run: Path, tmp_path: Path, override: str, message: str) -> None:
    out = tmp_path / "x.txt"
    assert_clean_failure(generate(shipped(lm_run), override, f"out={out}"), None, message)
    assert not out.exists()


def test_transformer_generates_past_its_context_and_refuses_a_longer_prompt(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    report = train_ok_in_process(
        run_dir, "recipe=lm", *SHORT, "model=transformer", "model.width=32", "data.seq_len=16", "trainer.max_epochs=1"
    )
    ckpt = run_dir / report["checkpoint"]
    out = tmp_path / "t.txt"
    proc = generate(ckpt, "prompt='The '", "max_new_tokens=30", f"out={out}")  # 34 symbols > 16: a window
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(out.read_text(encoding="utf-8")) == 4 + 30 + 1
    proc = generate(ckpt, f"prompt='{'x' * 17}'", f"out={out}")
    assert_clean_failure(proc, None, "prompt of 17 symbols is longer than this transformer's context of 16")


def test_generate_refuses_a_classifier(two_epoch_run: Path, tmp_path: Path) -> None:
    proc = generate(shipped(two_epoch_run), f"out={tmp_path / 'x.txt'}")
    assert_clean_failure(proc, None, "not a GAN or a language model")


# --- fine-tuning on new text ----------------------------------------------------------------------


def test_finetune_reads_new_text_with_the_checkpoints_vocabulary(lm_run: Path, tmp_path: Path) -> None:
    start = shipped(lm_run)
    run_dir = tmp_path / "run"
    path = text_file(tmp_path, FRENCH)
    proc = train_in_process(
        run_dir,
        "recipe=lm_finetune",
        f"task.init_ckpt={start}",
        f"data.path={path}",
        *SHORT,
        *LSTM,
        "trainer.max_epochs=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    unknown = FRENCH.count("é") + FRENCH.count("û") + FRENCH.count("€")
    line = f"{unknown} of {len(FRENCH)} symbols of {path} are not in the checkpoint's vocabulary; they read as <unk>"
    assert line in (run_dir / "train.log").read_text(), (run_dir / "train.log").read_text()[-2000:]
    report = results(run_dir)
    assert report["recipe"] == "lm_finetune" and report["metrics"]["test/bpc"] > 0
    before = torch.load(start, map_location="cpu", weights_only=True)["recipe"]["data"]
    after = torch.load(run_dir / report["checkpoint"], map_location="cpu", weights_only=True)["recipe"]["data"]
    assert after == {**before, "input_shape": [32]} and after["vocab"] == before["vocab"]


def test_finetune_without_a_starting_checkpoint_is_refused(run_dir: Path, tmp_path: Path) -> None:
    proc = train_in_process(run_dir, "recipe=lm_finetune", f"data.path={text_file(tmp_path, FRENCH)}")
    assert_clean_failure(proc, run_dir, "task.init_ckpt is not set", "task.init_ckpt=PATH")


def test_finetune_reading_the_text_with_its_own_vocabulary_is_refused(
    lm_run: Path, run_dir: Path, tmp_path: Path
) -> None:
    start = shipped(lm_run)
    path = text_file(tmp_path, FRENCH)
    overrides = (f"task.init_ckpt={start}", f"data.path={path}", "data.vocab_from=null", *SHORT, *LSTM)
    proc = train_in_process(run_dir, "recipe=lm_finetune", *overrides)
    assert_clean_failure(proc, run_dir, f"task.init_ckpt={start}'s vocabulary", f"data.vocab_from={start}")


# --- vocabularies that do not fit -----------------------------------------------------------------


def test_resume_on_text_of_another_vocabulary_names_vocab_from(lm_run: Path, run_dir: Path, tmp_path: Path) -> None:
    ckpt = lm_run / "checkpoints" / "last.ckpt"
    other = text_file(tmp_path, "zzz qqq\n" * 400)
    proc = train_in_process(run_dir, *TINY, "data=textfile", f"data.path={other}", f"ckpt_path={ckpt}")
    assert_clean_failure(proc, run_dir, f"ckpt_path={ckpt}'s vocabulary", f"data.vocab_from={ckpt}")


def test_evaluate_on_text_of_another_vocabulary_names_vocab_from(lm_run: Path, tmp_path: Path) -> None:
    """A text-file checkpoint evaluated on another file read with that file's own vocabulary."""
    run_dir = tmp_path / "run"
    report = train_ok_in_process(
        run_dir, *TINY, "data=textfile", f"data.path={text_file(tmp_path, FRENCH)}", "trainer.max_epochs=1"
    )
    ckpt = run_dir / report["checkpoint"]
    other = text_file(tmp_path, "zzz qqq\n" * 400, "other.txt")
    proc = run_module_in_process("recipes.evaluate", f"ckpt_path={ckpt}", f"+overrides.data.path={other}")
    assert_clean_failure(proc, None, "vocabulary", "data.vocab_from=")
    fitting = run_module_in_process(  # the same file read with the checkpoint's vocabulary: it evaluates
        "recipes.evaluate", f"ckpt_path={ckpt}", f"+overrides.data.path={other}", f"+overrides.data.vocab_from={ckpt}"
    )
    assert fitting.returncode == 0, fitting.stderr[-2000:]


# --- bad inputs of a sequence run -----------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["task=lm", "data=digits", "model=mlp"], "task=lm needs symbol sequences"),
        (["model=lstm", "data=digits"], "model=lstm takes a sequence"),
        (["model=transformer", "data=digits"], "model=transformer"),
        (["recipe=lm", "data.seq_len=1"], "data.seq_len=1 must be >= 2"),
        (["recipe=lm", "model.hidden=32", "model.proj_size=32"], "model.proj_size=32 must be in [0, model.hidden=32)"),
        (["recipe=lm", "data=textfile"], "data.path is not set"),
    ],
)
def test_bad_sequence_runs_are_refused_in_one_line(run_dir: Path, overrides: list[str], message: str) -> None:
    assert_clean_failure(train_in_process(run_dir, *overrides), run_dir, message)


def test_a_text_file_that_is_not_utf8_is_refused_in_one_line(run_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(FRENCH.encode("latin-1", errors="replace"))
    proc = train_in_process(run_dir, "recipe=lm", "data=textfile", f"data.path={bad}")
    assert_clean_failure(proc, run_dir, f"data.path={bad} is not UTF-8", "iconv")


# --- sequence classification ----------------------------------------------------------------------


def test_an_lstm_classifies_digits_read_row_by_row(run_dir: Path) -> None:
    report = train_ok_in_process(
        run_dir,
        "data=digits_rows",
        "model=lstm",
        "model.hidden=64",
        "task=classifier",
        "task.optimizer.lr=0.01",
        "trainer.max_epochs=5",
    )
    assert report["metrics"]["test/acc"] > 0.6, report["metrics"]  # chance is 0.1


# --- parallel and sweeps (slow tier) ------------------------------------------------------------


@pytest.mark.slow  # two ranks started as processes: ~20 s on a quiet 2-core machine
def test_lm_trains_under_ddp_sim(run_dir: Path) -> None:
    report = train_ok(run_dir, *TINY, "trainer=ddp_sim", "trainer.max_epochs=1")  # ranks as processes
    assert report["parallel"]["world_size"] == 2 and report["metrics"]["test/bpc"] > 0
    data = torch.load(run_dir / report["checkpoint"], map_location="cpu", weights_only=True)["recipe"]["data"]
    assert data["vocab"] == PyTextDataModule(seq_len=32).vocab.to_list()


@pytest.mark.slow  # two tiny runs in one multirun: ~15 s
def test_a_learning_rate_sweep_runs_each_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_module_in_process(
        "recipes.train",
        "-m",
        f"hydra.sweep.dir={sweep}",
        *TINY,
        "task.optimizer.lr=0.003,0.01",
        "trainer.max_epochs=1",
        "callbacks.progress_bar=null",
        "trainer.enable_progress_bar=false",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [json.loads((sweep / str(i) / "results.json").read_text()) for i in (0, 1)]
    assert all(job["task"] == "lm" and job["metrics"]["test/bpc"] > 0 for job in jobs)
    assert jobs[0]["metrics"] != jobs[1]["metrics"]


@pytest.mark.slow  # the ONNX exporter unrolls the step-by-step LSTMP: ~30 s under load
def test_an_lstmp_language_model_exports_with_dynamic_int8(tmp_path: Path) -> None:
    """export=dynamic on an LSTMP: written through its step-by-step copy, fp32 and int8 checked per step."""
    run_dir = tmp_path / "run"
    report = train_ok_in_process(run_dir, *TINY, "model.proj_size=16", "trainer.max_epochs=1", "export=dynamic")
    export = report["export"]
    assert (run_dir / export["onnx"]).is_file() and (run_dir / export["onnx_dynamic"]).is_file()
    assert export["parity_max_abs_diff"] < 1e-4 and export["top1_agreement"] == 1.0
    assert export["int8"]["top1_agreement"] >= 0.95 and export["bytes"]["onnx_dynamic"] < export["bytes"]["onnx"]
