"""A non-editable install works from any directory (DESIGN §2: ``pip install .``, not only ``-e``).

Builds a wheel of the package, checks it ships the package data (the DeepSpeed JSON files and
the demo recipe), installs it with ``pip install --target`` into a temp directory, and runs the
console module from an EMPTY directory with only that install on ``PYTHONPATH`` (the venv's
python supplies the dependencies; its editable install of this repo comes later on
``sys.path`` and must not be the one imported): ``--help`` of ``demo``, the ``adaspec-dist``
console script, and a 2-step sft ``train`` with ``ds_zero0.json`` named by file name only, which
only resolves through the installed package. About 30 s on 2 busy cores.

The wheel is built from a copy of the files setup.py reads: building in place would write
``build/`` and ``*.egg-info`` into a working tree that other people and jobs share.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.fixtures import spm_tokenizer_dir  # noqa: F401  (session fixture)
from tests.helpers import REPO

# ~25 s on 2 cores (builds a wheel, installs it, trains two steps): `make test` only, not `make test-fast`.
pytestmark = pytest.mark.slow

SHIPPED = ["ds_zero0.json", "ds_zero1.json", "ds_zero2.json", "ds_zero3.json", "demo.yaml"]
BUILD_INPUTS = ["setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md"]
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PYTHONPATH")


def _pip(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def install(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "adaspec_dist", src / "adaspec_dist",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = root / "wheels"
    _pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), ".", cwd=src)
    (wheel,) = wheels.glob("adaspec_dist-*.whl")
    site = root / "site"
    _pip("install", "--no-deps", "-q", "--target", str(site), str(wheel), cwd=root)
    empty = root / "empty"
    empty.mkdir()
    return {"root": root, "wheel": wheel, "site": site, "empty": empty}


def _run(install: dict[str, Path], args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """``args`` in the empty directory with only the installed wheel on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    env.update(PYTHONPATH=str(install["site"]), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1")
    proc = subprocess.run(args, cwd=install["empty"], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_wheel_ships_the_configs(install):
    names = set(zipfile.ZipFile(install["wheel"]).namelist())
    missing = [n for n in SHIPPED if f"adaspec_dist/configs/{n}" not in names]
    assert not missing, f"the wheel lacks package data {missing}; see package_data in setup.py"


def test_the_install_is_what_runs(install):
    probe = ("import importlib.metadata as md, adaspec_dist, adaspec_dist.configs as c; "
             "print(adaspec_dist.__file__); print(adaspec_dist.__version__, md.version('adaspec-dist')); "
             "print(c.shipped('ds_zero0.json'))")
    lines = _run(install, [sys.executable, "-c", probe]).stdout.split("\n")
    site = install["site"].resolve()
    assert Path(lines[0]).resolve().is_relative_to(site), f"imported {lines[0]}, not the install in {site}"
    version, installed = lines[1].split()
    assert version == installed  # the wheel's metadata is the package's own version
    shipped = Path(lines[2]).resolve()
    assert shipped.is_relative_to(site) and shipped.is_file()


def test_cli_help_from_an_empty_directory(install):
    out = _run(install, [sys.executable, "-m", "adaspec_dist.cli", "demo", "--help"]).stdout
    assert "usage: adaspec-dist demo" in out
    script = install["site"] / "bin" / "adaspec-dist"  # the console_scripts entry point
    assert script.is_file(), "the wheel installs no adaspec-dist script; see entry_points in setup.py"
    assert "usage: adaspec-dist" in _run(install, [str(script), "--help"]).stdout
    assert not any(install["empty"].iterdir()), "running the CLI wrote into the working directory"


def test_two_step_train_from_the_install(install, spm_tokenizer_dir):  # noqa: F811
    run_dir = install["root"] / "run"
    proc = _run(install, [sys.executable, "-m", "adaspec_dist.cli", "train", "objective=sft",
                          "draft.preset=tiny-neox", f"tokenizer={spm_tokenizer_dir}", "data.task=arith",
                          "data.limit=8", "data.max_length=48", "max_steps=2", "engine.ds_config=ds_zero0.json",
                          "engine.micro_batch_size=2", f"run_dir={run_dir}"], timeout=300)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2
    final = Path(summary["export"])
    assert final == run_dir / "final" and (final / "config.json").is_file()
    assert any(final.glob("*.safetensors")) and (final / "tokenizer_config.json").is_file()
    assert (run_dir / "checkpoints" / "latest").is_file()
