"""The Arrow example cache: served on the second build, rebuilt when data or config change, atomic on failure."""

from __future__ import annotations

import hashlib
import os
import textwrap
from pathlib import Path

import pytest
from datasets import Dataset

from recsys_lightning.pipeline.cache import ExampleCache
from recsys_lightning.pipeline.datamodule import RecDataModule, TaskSpec


def module(root: Path, cache: Path, **options) -> RecDataModule:
    return RecDataModule(root=str(root), cache_dir=str(cache), vocab_size=300, **options)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its content hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def rows(dm: RecDataModule) -> list[list[dict]]:
    return [ds.to_list() for ds in [*dm._train, *dm._eval["val"], *dm._eval["test"]]]


def test_a_second_build_is_served_from_the_cache(tiny_reviews, tmp_path, monkeypatch):
    first = module(tiny_reviews, tmp_path)
    first.setup("fit")
    first.setup("test")
    assert (first.cache.folder / "tokenizer.json").is_file() and (first.cache.folder / "key.json").is_file()
    assert "entity_tokens" in first._train[0].column_names
    monkeypatch.setattr(RecDataModule, "_rows", lambda *a, **k: pytest.fail("rows rebuilt despite the cache"))
    monkeypatch.setattr("recsys_lightning.pipeline.datamodule.train_tokenizer",
                        lambda *a, **k: pytest.fail("tokenizer retrained despite the cache"))
    second = module(tiny_reviews, tmp_path)
    second.setup("fit")
    second.setup("test")
    assert second.cache.folder == first.cache.folder
    assert second.tokenizer.backend_tokenizer.to_str() == first.tokenizer.backend_tokenizer.to_str()
    assert rows(second) == rows(first)


PROBE = textwrap.dedent('''
    from recsys_lightning.builtin_tasks.sequential import Sequential
    from recsys_lightning.registry import register_task

    @register_task("cache_probe")
    class CacheProbe(Sequential):
        """The sequential family under another name, with its own prompt file."""
''')


def test_changed_data_config_prompts_or_templates_get_a_new_key(tiny_reviews, tmp_path):
    plugin = tmp_path / "plugin"
    (plugin / "tasks").mkdir(parents=True)
    (plugin / "prompts").mkdir()
    (plugin / "tasks" / "cache_probe.py").write_text(PROBE)
    prompts = plugin / "prompts" / "cache_probe.yaml"
    prompts.write_text('templates:\n  - {id: p-1, text: "{user} bought {history}, then {item}.", target: item}\n')
    probe = {"tasks": [TaskSpec("cache_probe")], "task_dirs": [str(plugin / "tasks")]}

    def key(**options) -> Path:
        dm = module(tiny_reviews, tmp_path / "cache", **{**probe, **options})
        dm.load()
        return dm.cache.folder

    base = key()
    assert key() == base
    variants = [key(max_length=128), key(item_index="random"), key(seed=1),
                key(textualize={"item": "product {item}"}),
                key(tasks=[TaskSpec("cache_probe", options={"max_history": 3})])]
    prompts.write_text('templates:\n  - {id: p-1, text: "{user} got {history}, next {item}.", target: item}\n')
    variants.append(key())
    data_file = next(tiny_reviews.glob("*.gz"))
    stat = data_file.stat()
    os.utime(data_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    try:
        variants.append(key())
    finally:
        os.utime(data_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert len({base, *variants}) == len(variants) + 1


def test_a_failed_build_leaves_the_cache_untouched(tiny_reviews, tmp_path, monkeypatch):
    dm = module(tiny_reviews, tmp_path)
    dm.setup("fit")
    before = snapshot(tmp_path)

    def broken_rows(self, family, split, unseen):
        raise RuntimeError("disk full while building")

    monkeypatch.setattr(RecDataModule, "_rows", broken_rows)
    again = module(tiny_reviews, tmp_path)
    again.setup("fit")  # served from the cache: nothing to build
    with pytest.raises(RuntimeError, match="disk full"):
        again.setup("test")
    assert snapshot(tmp_path) == before
    monkeypatch.undo()

    def save_half(self, path, **kwargs):
        Path(path).mkdir(parents=True)
        (Path(path) / "data-00000-of-00001.arrow").write_bytes(b"half an arrow file")
        raise OSError("disk full while saving")

    monkeypatch.setattr(Dataset, "save_to_disk", save_half)
    with pytest.raises(OSError, match="disk full while saving"):
        module(tiny_reviews, tmp_path).setup("test")
    assert snapshot(tmp_path) == before  # no partial test split, no temporary folder left behind


def test_an_entry_written_first_wins(tmp_path):
    cache = ExampleCache.open(tmp_path, "x", {"k": 1})
    first = cache.dataset("a/b", lambda: Dataset.from_dict({"x": [1, 2]}))
    cache._publish(cache.folder / "a" / "b", lambda tmp: Dataset.from_dict({"x": [3]}).save_to_disk(str(tmp)))
    assert cache.dataset("a/b", lambda: pytest.fail("rebuilt")).to_list() == first.to_list() == [{"x": 1}, {"x": 2}]
    assert not [p for p in cache.folder.rglob(".tmp-*")]


@pytest.mark.slow
def test_num_proc_builds_the_same_rows(tmp_path):
    one = RecDataModule(cache_dir=None, vocab_size=300)
    two = RecDataModule(cache_dir=None, vocab_size=300, num_proc=2)
    one.setup("fit")
    two.setup("fit")
    assert one._train[0].to_list() == two._train[0].to_list() and len(one._train[0]) > 1000


def test_decoding_options_share_the_key_of_the_rows_they_decode(tiny_reviews, tmp_path):
    def key(**options) -> Path:
        dm = module(tiny_reviews, tmp_path / "cache", tasks=[TaskSpec("sequential", options=options)])
        dm.load()
        return dm.cache.folder

    base = key()
    assert key(prior={"weight": 0.5, "smoothing": 2.0, "context": 3, "decay": 0.3,
                      "window": 2}) == base  # a DecodingOption: the same rows
    assert key(crops=1) != base
