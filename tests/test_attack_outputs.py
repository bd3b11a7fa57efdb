"""Lost or clobbered files (issue #13, items 7-10): every command that writes checks all its
outputs before any work, never writes over an input or a non-regular file, writes all its
outputs or none, and turns a file-system failure into one line and exit 2.

Inputs are generated in tmp_path; each case runs through tests/attack.py (exit code, one
stderr line, nothing changed outside the declared outputs)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from attack import attack, run_case, snapshot
from conftest import make_onnx, vi

from pexopt.errors import PexError
from pexopt.outputs import MANIFEST, Outputs

FAST = ("--time-limit", "2", "--workers", "1", "--no-split", "--quiet")
GENERATED_C = {"pex_model.h", "pex_model.c", "pex_weights.h", "pex_weights.c", "pex_kernels.h",
               "pex_kernels.c", "README.md", MANIFEST}


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def planned(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(int8 model, its validated plan), solved once for the module."""
    d = tmp_path_factory.mktemp("planned")
    model = d / "m.onnx"
    shutil.copy(models_dir / "resnet8_int8.onnx", model)
    o = run_case(["solve", "m.onnx", *FAST, "-o", "plan.json"], d)
    assert o.code == 0, o.stderr
    return model, d / "plan.json"


@pytest.fixture
def work(planned: tuple[Path, Path], tmp_path: Path) -> Path:
    """A folder with m.onnx and plan.json (copies)."""
    for p in planned:
        shutil.copy(p, tmp_path / p.name)
    return tmp_path


@pytest.fixture
def float_model(tmp_path: Path) -> Path:
    """A float conv model: solves in a second, but the C emitter refuses it (int8 only)."""
    from conftest import conv_weights
    from onnx import helper

    return make_onnx(
        tmp_path / "f.onnx",
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3],
                          pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"], name="relu")],
        [vi("x", [1, 3, 8, 8])], [vi("y", [1, 4, 8, 8])], [conv_weights("w", 4, 3, 3, 3)])


def _mount_tmpfs(path: Path, opts: str) -> bool:
    path.mkdir(exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path | None]:
    """A 96 KiB tmpfs (a disk that fills up), or None where mounting is not allowed."""
    mnt = tmp_path / "disk"
    ok = _mount_tmpfs(mnt, "size=96k,mode=755")
    yield mnt if ok else None
    if ok:
        subprocess.run(["umount", str(mnt)], check=False)


# -- item 7: never over an input, only regular files ------------------------------------------

def test_solve_never_writes_over_its_model(work: Path) -> None:
    attack(["solve", "m.onnx", *FAST, "-o", "m.onnx"], work, words=("-o", "m.onnx", "input"))
    os.symlink("m.onnx", work / "link.onnx")
    attack(["solve", "m.onnx", *FAST, "-o", "link.onnx"], work, words="input")
    os.link(work / "m.onnx", work / "hard.onnx")
    attack(["solve", "m.onnx", *FAST, "-o", "hard.onnx"], work, words="input")
    attack(["solve", "m.onnx", *FAST, "-o", "./sub/../m.onnx"], work, words="input")


def test_external_data_of_the_model_is_an_input(float_model: Path) -> None:
    import onnx

    d = float_model.parent
    m = onnx.load(str(float_model))
    onnx.save(m, str(d / "ext.onnx"), save_as_external_data=True, location="w.data",
              size_threshold=0)
    assert (d / "w.data").is_file()
    attack(["solve", "ext.onnx", *FAST, "-o", "w.data"], d, words=("w.data", "input"))
    attack(["quantize", "ext.onnx", "-o", "w.data", "--calib", "random:2"], d, words="input")


def test_other_commands_never_write_over_their_inputs(work: Path) -> None:
    np = pytest.importorskip("numpy")
    np.save(work / "calib.npy", np.zeros((2, 3, 32, 32), np.float32))
    attack(["quantize", "m.onnx", "-o", "m.onnx", "--calib", "random:2"], work, words="input")
    attack(["quantize", "m.onnx", "-o", "calib.npy", "--calib", "calib.npy"], work,
           words="input")
    attack(["bench", "m.onnx", "--update-readme", "m.onnx", "--quiet"], work, words="input")
    (work / "rep").mkdir()
    shutil.copy(work / "plan.json", work / "rep" / "summary.md")
    attack(["report", "rep/summary.md", "--out", "rep"], work, words="input")
    shutil.copy(Path(__file__).parents[1] / "solver_configs" / "cortex-m4.yaml", work / "p.yaml")
    attack(["calibrate", "--target", "p.yaml", "-o", "p.yaml", "--quick"], work, words="input")
    attack(["calibrate", "--target", "p.yaml", "--quick"], work, words="input")  # -o p.yaml


def test_codegen_manifest_never_removes_an_input(work: Path) -> None:
    (work / "out").mkdir()
    shutil.copy(work / "m.onnx", work / "out" / "m.onnx")
    (work / "out" / MANIFEST).write_text("# pexopt\nm.onnx\n")  # a hostile manifest
    attack(["codegen", "plan.json", "out/m.onnx", "-o", "out"], work, words="input")


def test_dev_null_and_fifo_are_never_replaced(work: Path) -> None:
    os.mkfifo(work / "fifo")
    attack(["solve", "m.onnx", *FAST, "-o", "fifo"], work, words=("fifo", "regular file"))
    assert stat.S_ISFIFO(os.lstat(work / "fifo").st_mode)
    before = os.stat("/dev/null")
    attack(["solve", "m.onnx", *FAST, "-o", "/dev/null"], work, subprocess_=True,
           words=("/dev/null", "regular file"))
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    os.symlink("/dev/null", work / "null.json")
    attack(["solve", "m.onnx", *FAST, "-o", "null.json"], work, words="regular file")
    attack(["quantize", "m.onnx", "-o", "/dev/full", "--calib", "random:2"], work,
           words="regular file")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


# -- item 8: codegen into an existing folder ---------------------------------------------------

def _user_project(root: Path) -> Path:
    proj = root / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "main.c").write_text("int main(void) { return 0; }\n")
    (proj / "src" / "notes.txt").write_text("mine\n")
    return proj


def test_codegen_keeps_the_users_files(work: Path) -> None:
    proj = _user_project(work)
    o = run_case(["codegen", "../plan.json", "../m.onnx", "-o", "."], proj)
    assert o.code == 0, o.stderr
    assert o.changed == GENERATED_C  # only pexopt's files, nothing else touched
    assert (proj / "main.c").read_text().startswith("int main")
    assert (proj / "src" / "notes.txt").read_text() == "mine\n"
    assert sorted((proj / MANIFEST).read_text().split()[-7:]) == sorted(GENERATED_C - {MANIFEST})
    before = snapshot(work)
    o = run_case(["codegen", "../plan.json", "../m.onnx", "-o", "../proj"], proj)  # from inside
    assert o.code == 0, o.stderr
    assert snapshot(work) == before  # same C, same files: no renamed or temp folder left


def test_codegen_removes_only_its_own_stale_files(work: Path) -> None:
    proj = _user_project(work)
    assert run_case(["codegen", "plan.json", "m.onnx", "-o", "proj"], work).code == 0
    (proj / "pex_old.c").write_text("/* generated by pexopt */\n")
    with open(proj / MANIFEST, "a") as f:
        f.write("pex_old.c\nmain.c\n../m.onnx\nmain.c/../../plan.json\n")  # + hostile lines
    o = run_case(["codegen", "plan.json", "m.onnx", "-o", "proj"], work)
    assert o.code == 0, o.stderr
    assert o.changed == {"proj/pex_old.c", f"proj/{MANIFEST}"}
    assert (proj / "main.c").is_file() and (work / "m.onnx").is_file()


def test_codegen_refuses_to_replace_a_users_file_of_a_generated_name(work: Path) -> None:
    proj = _user_project(work)
    (proj / "README.md").write_text("# my project\n")
    attack(["codegen", "plan.json", "m.onnx", "-o", "proj"], work,
           words=("README.md", "not generated by pexopt"))


# -- item 9: all outputs or none ---------------------------------------------------------------

def test_solve_checks_every_output_before_solving(work: Path) -> None:
    (work / "plan.json").write_text("old plan\n")
    (work / "c_file").write_text("not a folder\n")
    attack(["solve", "m.onnx", *FAST, "-o", "plan.json", "--emit-c", "c_file"], work,
           words=("--emit-c", "c_file", "not a folder"))
    (work / "front.png").mkdir()
    attack(["solve", "m.onnx", *FAST, "-o", "plan.json", "--pareto", "front.csv"], work,
           words=("--pareto", "front.png", "folder"))
    attack(["solve", "m.onnx", *FAST, "-o", "x.png", "--pareto", "x.csv"], work,
           words=("x.png", "also written"))
    attack(["solve", "m.onnx", *FAST, "-o", "c/pex_model.c", "--emit-c", "c"], work,
           words="pex_model.c")


def test_solve_writes_no_plan_when_the_c_cannot_be_emitted(float_model: Path) -> None:
    d = float_model.parent
    (d / "plan.json").write_text("old plan\n")
    attack(["solve", "f.onnx", *FAST, "--dtype", "float32", "-o", "plan.json", "--emit-c", "c"],
           d, words=("codegen", "int8"))
    assert (d / "plan.json").read_text() == "old plan\n"


def test_solve_writes_both_outputs(work: Path) -> None:
    o = run_case(["solve", "m.onnx", *FAST, "-o", "new.json", "--emit-c", "c"], work)
    assert o.code == 0, o.stderr
    assert o.changed == {"new.json", "c"} | {f"c/{n}" for n in GENERATED_C}


def test_bench_checks_its_outputs_and_readme_first(work: Path) -> None:
    (work / "R.md").write_text("# no bench section\n")
    attack(["bench", "--random-dags", "1", "--dag-ops", "6", "--quiet", "--update-readme",
            "R.md"], work, words=("R.md", "bench:start"))
    (work / "bout" / "bench.md").mkdir(parents=True)
    attack(["bench", "--random-dags", "1", "--dag-ops", "6", "--quiet", "--out", "bout"], work,
           words=("bench.md", "folder"))
    (work / "R.md").write_text("a\n<!-- bench:start -->\nold\n<!-- bench:end -->\nz\n")
    o = run_case(["bench", "--random-dags", "1", "--dag-ops", "6", "--time-limit", "2",
                  "--workers", "1", "--quiet", "--out", "b2", "--update-readme", "R.md"], work)
    assert o.code == 0, o.stderr
    assert o.changed == {"R.md", "b2", "b2/bench.json", "b2/bench.md"}
    text = (work / "R.md").read_text()
    assert text.startswith("a\n<!-- bench:start -->\n| model") and text.endswith("end -->\nz\n")


def _limit_file_size() -> None:
    """In the child: files cannot grow past 20 kB (write fails with EFBIG, not a signal)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_a_full_disk_writes_nothing(work: Path, tmpfs: Path | None) -> None:
    """The plan fits, the C weights do not: one line naming the file, the old plan stays."""
    if tmpfs is not None:  # a real full disk (ENOSPC)
        (tmpfs / "plan.json").write_text("old plan\n")
        line = attack(["solve", "../m.onnx", *FAST, "-o", "plan.json", "--emit-c", "c"], tmpfs,
                      words=("no space left", "nothing written"))
        assert (tmpfs / "plan.json").read_text() == "old plan\n"
        assert "pex_" in line
    (work / "plan.json").write_text("old plan\n")  # the same with a file-size limit (EFBIG)
    attack(["solve", "m.onnx", *FAST, "-o", "plan.json", "--emit-c", "c"], work,
           subprocess_=True, preexec_fn=_limit_file_size, words=("too large", "pex_"))
    assert (work / "plan.json").read_text() == "old plan\n"


def test_commit_rolls_back_replaced_files(tmp_path: Path) -> None:
    """The second rename fails after the first file was replaced: the first is restored."""
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    outs = Outputs()
    outs.file(a, "-o")
    outs.file(b, "--other")
    outs.check()
    outs.put(a, "new a")
    outs.put(b, "new b")
    (b / "x").mkdir(parents=True)  # b becomes a non-empty folder after the check
    with pytest.raises(PexError, match="b.txt"):
        outs.commit()
    assert a.read_text() == "old a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]  # no temp left


# -- item 10: one line and exit 2 --------------------------------------------------------------

def test_bad_targets_are_one_line(work: Path) -> None:
    (work / "adir").mkdir()
    (work / "afile").write_text("x\n")
    attack(["solve", "m.onnx", *FAST, "-o", "adir"], work, words=("adir", "folder"))
    attack(["solve", "m.onnx", *FAST, "-o", "adir/"], work, words="folder")
    attack(["solve", "m.onnx", *FAST, "-o", "/proc/x"], work, words="/proc")
    attack(["solve", "m.onnx", *FAST, "-o", "/proc/self/environ"], work, words="/proc")
    attack(["solve", "m.onnx", *FAST, "-o", "afile/plan.json"], work,
           words=("afile", "not a folder"))
    attack(["report", "plan.json", "--out", "afile"], work, words=("afile", "not a folder"))
    attack(["codegen", "plan.json", "m.onnx", "-o", "afile"], work, words="not a folder")
    attack(["codegen", "plan.json", "m.onnx", "-o", "afile/c"], work, words="not a folder")
    (work / "res.jsonl").write_text(json.dumps({"key": "k"}) + "\n")
    attack(["sweep-report", "res.jsonl", "--out", "afile"], work, words="not a folder")
    attack(["quantize", "m.onnx", "-o", "adir", "--calib", "random:2"], work, words="folder")
    (work / "sw.yaml").write_text("models: [m.onnx]\nbudgets: [64k]\n")
    attack(["sweep", "sw.yaml", "--out", "afile", "--quiet"], work, words="not a folder")
    attack(["calibrate", "-o", "adir"], work, words="folder")


def test_read_only_folder(work: Path) -> None:
    ro = work / "ro"
    if not _mount_tmpfs(ro, "size=64k,ro"):  # no mount here: a file where a folder is expected
        (work / "ro").rmdir()
        (work / "ro").write_text("x\n")
        attack(["solve", "m.onnx", *FAST, "-o", "ro/plan.json"], work, words="not a folder")
        return
    try:
        attack(["solve", "m.onnx", *FAST, "-o", "ro/plan.json"], work,
               words=("ro", "read-only"))
        attack(["codegen", "plan.json", "m.onnx", "-o", "ro/c"], work, words="read-only")
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_report_writes_only_its_five_files(work: Path) -> None:
    (work / "notes.txt").write_text("mine\n")
    o = run_case(["report", "plan.json", "m.onnx", "--out", "."], work)
    assert o.code == 0, o.stderr
    assert o.changed == {"memory_timeline.png", "memory_timeline.svg", "arena_layout.png",
                         "arena_layout.svg", "summary.md", MANIFEST}
    o = run_case(["report", "plan.json", "m.onnx", "--out", "."], work)  # again: its own files
    assert o.code == 0, o.stderr
    (work / "rep").mkdir()
    (work / "rep" / "summary.md").write_text("my own summary\n")  # a user's file of that name
    attack(["report", "plan.json", "m.onnx", "--out", "rep"], work,
           words=("summary.md", "not generated by pexopt"))
    (work / "summary.md").unlink()
    (work / "summary.md").mkdir()  # one output cannot be written: none is
    attack(["report", "plan.json", "m.onnx", "--out", "."], work, words=("summary.md", "folder"))
