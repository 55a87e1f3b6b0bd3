"""The built wheel: what it holds, and a cycle and a gate report from a fresh install of it.

The wheel is built from a clean copy of the source tree (an in-tree ``build/`` folder could carry
files removed since). The install test puts it into a new virtualenv that sees the shared
environment's dependencies through a path line in a ``.pth`` file (a path line adds the folder only:
the ``.pth`` files there, the editable ``conveyor`` finder among them, are not run; JUPYTER_PATH names
the dependencies' data files the same way), then runs from a folder outside the repository with no
PYTHONPATH, so only the installed package can answer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

import conveyor

from helpers.specs import toy_spec_dict
from helpers.toydata import write_toy_dataset

ROOT = Path(__file__).resolve().parent.parent
# what a source checkout has that is not the project's source
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
                                    ".pytest_cache", "workspace", ".demo", "wandb", "tests", "bench", "site")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=NOT_SOURCE)
    out = tmp / "dist"
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (whl,) = out.glob("conveyor-*.whl")
    return whl


def test_the_wheel_holds_the_package_its_data_and_nothing_else(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names}
    dist_info = next(t for t in tops if t.endswith(".dist-info"))
    assert tops == {"conveyor", dist_info}, "no top-level flows/ or tasks/ package"
    assert zipfile.ZipFile(wheel).read(f"{dist_info}/top_level.txt").decode().split() == ["conveyor"]

    # every module of the source package
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "conveyor").rglob("*.py")}
    assert source - names == set()
    # and the files found with importlib.resources
    data = {"conveyor/py.typed", "conveyor/reporting/notebooks/gate_report.ipynb",
            "conveyor/reporting/notebooks/templates/conveyor_report/index.html.j2",
            "conveyor/reporting/notebooks/templates/conveyor_report/conf.json",
            "conveyor/demo/specs/classification.yaml", "conveyor/demo/specs/detection.yaml",
            "conveyor/demo/specs/segmentation.yaml", "conveyor/data/suites/manifest.json"}
    assert data - names == set()
    suites = {n for n in names if n.startswith("conveyor/data/suites/") and n.endswith(".json")}
    assert suites == {f"conveyor/data/suites/{p.name}" for p in (ROOT / "conveyor" / "data" / "suites").glob("*.json")}

    assert dist_info == f"conveyor-{conveyor.__version__}.dist-info", "the version comes from conveyor.__version__"
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "conveyor = conveyor.cli.main:main" in entry_points


def fresh_venv(root: Path) -> Path:
    """A new virtualenv whose own site-packages comes first and the shared one's folder after it."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=300)
    python = root / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "shared-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.mark.slow
def test_a_cycle_and_its_gate_report_from_a_fresh_install_of_the_wheel(wheel, tmp_path):
    venv = tmp_path / "venv"
    python = fresh_venv(venv)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PREFECT_")}
    env.update(CONVEYOR_REPORT="0", PYTHONNOUSERSITE="1")  # the cycle skips its report: `conveyor report` makes it
    # the dependencies' data files (nbconvert's base templates) live under the shared environment's prefix,
    # where an install of the dependencies into this virtualenv would have put them under its own
    env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(Path(sys.prefix) / "share" / "jupyter"),
                                                        os.environ.get("JUPYTER_PATH")]))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()

    def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)

    # --ignore-installed: never consider (or uninstall) the shared environment's editable conveyor
    res = run(str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel))
    assert res.returncode == 0, res.stderr[-3000:]

    probe = run(str(python), "-c", "import json, sys, importlib.util, conveyor; print(json.dumps({"
                "'file': conveyor.__file__, 'path': sys.path, 'finders': [type(f).__module__ for f in sys.meta_path],"
                "'flows': importlib.util.find_spec('flows') is not None,"
                "'tasks': importlib.util.find_spec('tasks') is not None}))")
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen = json.loads(probe.stdout)
    assert Path(seen["file"]).resolve().is_relative_to(venv.resolve()), seen["file"]
    assert not any("editable" in f for f in seen["finders"]), seen["finders"]
    # the source tree is not importable: no path entry is the checkout or a folder of its source (the
    # dependencies' site-packages may live in a virtualenv inside the checkout, as `make` makes it)
    source = [ROOT, ROOT / "conveyor", ROOT / "tests", ROOT / "flows", ROOT / "tasks"]
    assert not any(p and any(Path(p).resolve() == s.resolve() for s in source) for p in seen["path"]), seen["path"]
    assert not any(p and (Path(p) / "conveyor" / "__init__.py").resolve().is_relative_to(ROOT / "conveyor")
                   for p in seen["path"]), seen["path"]
    assert not seen["flows"] and not seen["tasks"]

    version = run(str(venv / "bin" / "conveyor"), "--version")
    assert version.returncode == 0 and version.stdout.startswith("conveyor "), version.stderr

    pipeline = tmp_path / "pipeline"
    write_toy_dataset(pipeline / "data", per_class_per_camera=4, cameras=4)
    spec = pipeline / "spec.yaml"
    spec.write_text(yaml.safe_dump(toy_spec_dict(train={"epochs": 1})))
    cycle = run(str(python), "-m", "conveyor", "run", str(spec), "--json")
    assert cycle.returncode == 0, cycle.stderr[-5000:]
    summary = json.loads(cycle.stdout)
    run_dir = Path(summary["run_dir"])
    assert run_dir.is_relative_to(pipeline / "workspace") and (run_dir / "summary.json").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["run_id"] == summary["run_id"]
    assert summary["model_version"] == 1 and summary["metrics"]["f1"] is not None

    report = run(str(venv / "bin" / "conveyor"), "report", str(run_dir))
    assert report.returncode == 0, report.stderr[-5000:]
    html = Path(report.stdout.strip().splitlines()[-1])
    assert html.is_file() and html.is_relative_to(run_dir) and "<html" in html.read_text(errors="replace").lower()
