"""The sample cache: env folder, atomic writes, version key in the names."""

from __future__ import annotations

import pytest

from napari_medseg.samples import cache, ct, slide


def test_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "c"))
    assert cache.cache_dir() == tmp_path / "c"
    assert (tmp_path / "c").is_dir()


def test_cache_dir_default_is_user_cache(tmp_path, monkeypatch):
    import platformdirs

    monkeypatch.delenv(cache.ENV_VAR, raising=False)
    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda *a, **k: str(tmp_path / "user"))
    assert cache.cache_dir() == tmp_path / "user"


def test_ensure_files_generates_once_and_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))
    calls = []

    def gen(paths):
        calls.append(paths)
        for i, p in enumerate(paths):
            p.write_bytes(b"x" * (i + 1))

    a = cache.ensure_files(["a.bin", "b.bin"], gen)
    b = cache.ensure_files(["a.bin", "b.bin"], gen)
    assert a == b == [tmp_path / "a.bin", tmp_path / "b.bin"] and len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]


def test_killed_generation_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))

    def gen(paths):
        paths[0].write_bytes(b"half")
        raise KeyboardInterrupt  # the user killed it half way

    with pytest.raises(KeyboardInterrupt):
        cache.ensure_files(["x.tif", "y.tif"], gen)
    assert list(tmp_path.iterdir()) == []


def test_version_key_in_names(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))
    seen = []
    monkeypatch.setattr(cache, "ensure_files", lambda names, gen: seen.extend(names) or [tmp_path / n for n in names])
    monkeypatch.setattr(slide, "ensure_files", cache.ensure_files)
    monkeypatch.setattr(ct, "ensure_files", cache.ensure_files)
    slide.sample_slide_paths()
    ct.sample_ct_paths()
    assert all(f"-v{slide.VERSION}" in n for n in seen[:2]) and all(f"-v{ct.VERSION}" in n for n in seen[2:])
