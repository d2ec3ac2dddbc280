"""Character-level text data: the vocabulary's round trip, pytext split by topic, a text file split in
contiguous pieces, a checkpoint's vocabulary read onto new text, and the bad inputs refused in one line
(built as a run builds them: composed config, recipes.assembly.tasks.build_datamodule)."""

from __future__ import annotations

import logging
from pathlib import Path
from pydoc_data.topics import topics

import pytest
import torch

from recipes.assembly.tasks import build_datamodule
from recipes.data.contract import RecipeData
from recipes.data.text import SPLITS, PyTextDataModule, TextFileDataModule, windows
from recipes.data.vocabulary import UNK, Vocabulary
from recipes.errors import RecipeError
from tests.helpers.build import compose_train

LINES = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(60))


def built(tmp_path: Path, *overrides: str) -> RecipeData:
    """The data module `python -m recipes.train OVERRIDES` would build."""
    return build_datamodule(compose_train(tmp_path, *overrides))


def refused(tmp_path: Path, *overrides: str) -> str:
    with pytest.raises(RecipeError) as err:
        built(tmp_path, *overrides)
    message = str(err.value)
    assert "\n" not in message, message
    return message


def text_file(tmp_path: Path, text: str = LINES) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


def fake_checkpoint(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "lm.ckpt"
    torch.save({"state_dict": {}, "recipe": {"data": data}}, path)
    return path


# --- vocabulary ---------------------------------------------------------------------------------


def test_vocabulary_round_trip_and_unknown_count() -> None:
    vocab = Vocabulary.of_text("hello world")
    assert vocab.symbols == (UNK, " ", "d", "e", "h", "l", "o", "r", "w") and len(vocab) == 9
    ids = vocab.encode("hello world")
    assert ids.dtype == torch.long and ids.shape == (11,) and vocab.decode(ids) == "hello world"
    assert vocab.encode("help!").tolist() == [4, 3, 5, 0, 0] and vocab.unknown("help!") == 2
    assert vocab.decode(vocab.encode("help!")) == "hel\ufffd\ufffd"
    plain = vocab.to_list()
    assert plain == list(vocab.symbols) and Vocabulary.from_list(plain) == vocab
    assert Vocabulary.of_text("dlrow olleh") == vocab  # the same characters, the same vocabulary
    with pytest.raises(ValueError, match="sorted"):
        Vocabulary.from_list(["a", UNK])


def test_windows_are_non_overlapping_and_shifted_by_one() -> None:
    x, y = windows(torch.arange(11), 3)
    assert x.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert y.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


# --- pytext -------------------------------------------------------------------------------------


def test_pytext_is_split_by_topic_deterministically(tmp_path: Path) -> None:
    dm = built(tmp_path, "data=pytext", "data.seq_len=64", "data.batch_size=8")
    assert isinstance(dm, PyTextDataModule) and isinstance(dm, RecipeData)
    split = dm.topic_splits()
    names = [set(split[name]) for name in SPLITS]
    assert set().union(*names) == set(topics) and sum(map(len, names)) == len(topics)  # each topic once
    total = sum(map(len, topics.values()))
    for name, fraction in (("val", 0.1), ("test", 0.1)):
        share = sum(len(topics[t]) for t in split[name]) / total
        assert abs(share - fraction) < 0.03, (name, share)
    again = PyTextDataModule(seq_len=64, batch_size=8)
    assert again.topic_splits() == split and again.vocab == dm.vocab
    assert PyTextDataModule(seq_len=64, split_seed=1).topic_splits() != split
    assert dm.input_shape == (64,) and dm.num_classes == len(dm.vocab) == len(set("".join(topics.values()))) + 1
    assert dm.pixel_normalization() is None and dm.loader_workers() == 0
    dm.setup("fit")
    for name in SPLITS:  # every window lies in one split's text, x and y shifted by one
        text = dm.texts[name]
        assert text == "\n\n".join(topics[t] for t in split[name])
        loader = getattr(dm, f"{name}_dataloader")()
        x, y = next(iter(loader))
        assert x.shape == y.shape == (8, 64) and x.dtype == y.dtype == torch.long
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert all(dm.vocab.decode(torch.cat([row, y_row[-1:]])) in text for row, y_row in zip(x, y))
    val_x, _ = next(iter(dm.val_dataloader()))
    assert dm.vocab.decode(val_x[0]) == dm.texts["val"][:64]  # val and test in order


def test_training_batches_are_seeded_shuffles() -> None:
    first = PyTextDataModule(seq_len=32, batch_size=4)
    first.setup("fit")
    second = PyTextDataModule(seq_len=32, batch_size=4)
    second.setup("fit")
    a, b = next(iter(first.train_dataloader())), next(iter(second.train_dataloader()))
    assert torch.equal(a[0], b[0])
    assert not torch.equal(a[0], first.train_set.raw_batch(range(4))[0])  # shuffled


# --- a text file --------------------------------------------------------------------------------


def test_textfile_splits_are_contiguous_at_line_boundaries(tmp_path: Path) -> None:
    dm = built(tmp_path, "data=textfile", f"data.path={text_file(tmp_path)}", "data.seq_len=16", "data.batch_size=2")
    assert isinstance(dm, TextFileDataModule)
    texts = dm.texts
    assert texts["train"] + texts["val"] + texts["test"] == LINES
    assert texts["train"].endswith("\n") and texts["val"].endswith("\n")
    assert abs(len(texts["val"]) / len(LINES) - 0.1) < 0.03
    assert dm.vocab == Vocabulary.of_text(LINES)
    dm.setup("fit")
    x, y = next(iter(dm.test_dataloader()))
    assert dm.vocab.decode(x[0]) == texts["test"][:16] and dm.vocab.decode(y[0]) == texts["test"][1:17]


def test_textfile_bad_paths_are_refused_in_one_line(tmp_path: Path) -> None:
    assert "data.path is not set" in refused(tmp_path, "data=textfile")
    assert "does not exist" in refused(tmp_path, "data=textfile", f"data.path={tmp_path / 'none.txt'}")
    assert "is a directory" in refused(tmp_path, "data=textfile", f"data.path={tmp_path}")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(LINES.encode() + "café".encode("latin-1"))
    message = refused(tmp_path, "data=textfile", f"data.path={bad}")
    assert f"byte {len(LINES) + 3} (0xe9)" in message and "not UTF-8" in message and "iconv" in message


def test_seq_len_is_checked_against_every_split(tmp_path: Path) -> None:
    path = text_file(tmp_path)
    message = refused(tmp_path, "data=textfile", f"data.path={path}", "data.seq_len=1")
    assert message.startswith("data.seq_len=1 must be >= 2"), message
    message = refused(tmp_path, "data=textfile", f"data.path={path}", "data.seq_len=1000")
    assert message.startswith("data.seq_len=1000 is longer than the val split") and "lower data.seq_len" in message
    assert "data.seq_len=70000 is longer than the" in refused(tmp_path, "data=pytext", "data.seq_len=70000")


# --- a checkpoint's vocabulary ------------------------------------------------------------------


def test_vocab_from_a_checkpoint_maps_unknown_symbols(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = "abc abc abc\n" * 19 + "xyz\nabc abc abc\n"  # x, y and z in the test split
    vocab = Vocabulary.of_text("abc \n")
    ckpt = fake_checkpoint(tmp_path, {"input_shape": [16], "num_classes": len(vocab), "vocab": vocab.to_list()})
    overrides = ("data=textfile", f"data.path={text_file(tmp_path, text)}", "data.seq_len=4", f"data.vocab_from={ckpt}")
    with caplog.at_level(logging.WARNING, logger="recipes.data.text"):
        dm = built(tmp_path, *overrides)
    assert dm.vocab == vocab and dm.num_classes == 6
    lines = [r.getMessage() for r in caplog.records if "vocabulary" in r.getMessage()]
    assert lines == [
        f"data: 3 of {len(text)} symbols of {tmp_path / 'corpus.txt'} are not in the checkpoint's vocabulary; "
        "they read as <unk>"
    ]
    dm.setup("test")
    ids = torch.cat([x.flatten() for x, _ in dm.test_dataloader()])
    assert (ids == 0).sum() == 3 and dm.vocab.decode(ids).count("\ufffd\ufffd\ufffd\n") == 1


def test_vocab_from_refuses_what_holds_no_vocabulary(tmp_path: Path) -> None:
    images = fake_checkpoint(tmp_path, {"input_shape": [1, 8, 8], "num_classes": 10})
    message = refused(tmp_path, "data=pytext", f"data.vocab_from={images}")
    assert message.startswith(f"data.vocab_from={images} was trained on images") and "data.vocab_from=null" in message
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    assert "is not a readable checkpoint" in refused(tmp_path, "data=pytext", f"data.vocab_from={junk}")
    assert "does not exist" in refused(tmp_path, "data=pytext", f"data.vocab_from={tmp_path / 'none.ckpt'}")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    assert "has no vocabulary" in refused(tmp_path, "data=pytext", f"data.vocab_from={other}")
