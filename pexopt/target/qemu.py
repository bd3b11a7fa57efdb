"""Build generated C (a `pex_out/` folder) into bare-metal Cortex-M firmware and run it in QEMU.

`build_firmware` writes a `main.c` holding one input as a const array, compiles it with the
harness of `codegen/qemu/` (vector table, reset with FPU enable and stack painting, a fault
handler that reports and exits with `EXIT_FAULT`, semihosting console) and the generated
sources, links with `codegen/qemu/link.ld` and measures `.text`/`.data`/`.bss` and the
`pex_arena` symbol. `run_firmware` runs the ELF under `qemu-system-arm` with semihosting and
the `insn_count` TCG plugin, and returns the output bytes, exit code, stack high-water mark and
the exact number of instructions executed inside `pex_invoke`.

Needs `arm-none-eabi-gcc` (+ newlib for memcpy/memset/expf), `qemu-system-arm` and a host `gcc`
for the plugin: `apt-get install -y --no-install-recommends gcc-arm-none-eabi
libnewlib-arm-none-eabi qemu-system-arm`.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pexopt.errors import PexError

HARNESS_DIR = Path(__file__).resolve().parents[2] / "codegen" / "qemu"
HARNESS_SOURCES = ("startup.c", "semihost.c", "harness.c", "pex_harness_asm.S")
PLUGIN_SOURCE = "insn_count.c"
LINKER_SCRIPT = "link.ld"

# Board (-M) -> compiler flags (FPU flags give hard float; the harness enables the FPU).
BOARDS: dict[str, tuple[str, ...]] = {
    "mps2-an386": ("-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard", "-mthumb"),
    "mps2-an500": ("-mcpu=cortex-m7", "-mfpu=fpv5-d16", "-mfloat-abi=hard", "-mthumb"),
    "mps2-an385": ("-mcpu=cortex-m3", "-mthumb"),
}
CORES = {"mps2-an386": "Cortex-M4", "mps2-an500": "Cortex-M7", "mps2-an385": "Cortex-M3"}

# Exit codes of the firmware (codegen/qemu/pex_harness.h).
EXIT_OK = 0
EXIT_INVOKE_ERROR = 64
EXIT_FAULT = 65
EXIT_STACK_OVERFLOW = 66

# Instructions counted by the plugin that are not pex_invoke's own: pex_mark_begin's `bx lr`,
# `bl pex_invoke` and `bl pex_mark_end` (codegen/qemu/pex_harness_asm.S).
MARKER_OVERHEAD = 3

ARENA_SYMBOL = "pex_arena"
# newlib system-call stubs (libnosys): linked only when the code uses stdio, malloc, exit, ...
SYSCALL_STUBS = ("_write", "_read", "_open", "_close", "_lseek", "_fstat", "_isatty", "_sbrk",
                 "_kill", "_getpid", "_exit", "_gettimeofday", "_times", "_unlink", "_link")
INSTALL_HINT = ("apt-get install -y --no-install-recommends gcc-arm-none-eabi "
                "libnewlib-arm-none-eabi qemu-system-arm")


class TargetError(PexError):
    """The firmware cannot be built or run, or the run did not complete."""


class ToolMissingError(TargetError):
    """A cross compiler, binutils, QEMU or the host C compiler is not installed."""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        hint = "install a host C compiler (gcc)" if name == "gcc" else f"install: {INSTALL_HINT}"
        raise ToolMissingError(f"{name} not found on PATH; {hint}")
    return path


def require_tools(count_insns: bool = True) -> dict[str, str]:
    """Paths of every tool needed; ToolMissingError (one line) names the first missing one."""
    names = ["arm-none-eabi-gcc", "arm-none-eabi-size", "arm-none-eabi-nm", "qemu-system-arm"]
    if count_insns:
        names.append("gcc")
    return {n: _tool(n) for n in names}


def missing_tools(count_insns: bool = True) -> str | None:
    """None when everything is installed, else the error message."""
    try:
        require_tools(count_insns)
    except ToolMissingError as e:
        return str(e)
    return None


@dataclass
class Firmware:
    """A linked ELF and what was measured on it."""

    elf: Path
    board: str
    work_dir: Path
    input_size: int
    output_size: int
    arena_bytes: int  # size of the pex_arena symbol (arm-none-eabi-nm -S)
    arena_macro: int  # PEX_ARENA_BYTES of pex_model.h
    text: int  # .text section (vectors, code, read-only data incl. weights)
    data: int  # .data section
    bss: int  # .bss section (the arena and other zero-initialised data)
    stack_size: int  # thread-stack region (not in .bss)
    symbols: dict[str, tuple[int, int]] = field(repr=False)  # name -> (address, size)
    stack_frames: dict[str, int] = field(repr=False)  # function -> frame bytes (-fstack-usage)
    plugin: Path | None = None
    map_file: Path | None = None
    build_seconds: float = 0.0

    @property
    def core(self) -> str:
        return CORES.get(self.board, self.board)

    @property
    def flash_bytes(self) -> int:
        return self.text + self.data

    @property
    def ram_bytes(self) -> int:
        """Static RAM without the stacks: .data + .bss."""
        return self.data + self.bss


@dataclass
class RunResult:
    """What one run of the firmware under QEMU reported."""

    exit_code: int
    completed: bool  # the harness printed PEX:END
    output: bytes | None  # the PEX_OUTPUT_SIZE output bytes
    invoke_rc: int | None  # return value of pex_invoke
    insns: int | None  # instructions executed inside pex_invoke (exact)
    total_insns: int | None  # instructions executed by the whole program
    stack_bytes: int | None  # thread-stack high-water mark of the whole program
    invoke_stack_bytes: int | None  # ... below the stack pointer at the call of pex_invoke
    fault: str | None  # the fault handler's line, without the "PEX:FAULT " prefix
    console: str  # everything the firmware printed
    qemu_stderr: str
    seconds: float  # wall time of the QEMU process

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK and self.completed and self.output is not None

    def check(self) -> RunResult:
        """Self if the run completed with exit code 0, else TargetError (one line)."""
        if self.ok:
            return self
        if self.fault is not None:
            raise TargetError(f"firmware fault (exit {self.exit_code}): {self.fault}")
        if self.exit_code == EXIT_INVOKE_ERROR:
            raise TargetError(f"pex_invoke returned {self.invoke_rc}")
        detail = self.qemu_stderr.strip().splitlines()
        tail = f": {detail[-1]}" if detail else ""
        raise TargetError(f"firmware exited with code {self.exit_code} without completing{tail}")


# -- building -------------------------------------------------------------------------------


def _run(cmd: Sequence[str], what: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        first = next((ln for ln in lines if "error:" in ln or "Error:" in ln),
                     next((ln for ln in lines if "error" in ln), lines[0] if lines else ""))
        raise TargetError(f"{what} failed: {first.strip()}")
    return proc


_INT_RE = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\b")


def _eval_int(text: str) -> int | None:
    """Value of a simple integer macro body like `(1024u)` or `(3 * 32 * 32)`."""
    expr = _INT_RE.sub(lambda m: str(int(m.group(1), 0)), text).strip()
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return None
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Add, ast.Sub,
               ast.Mult, ast.FloorDiv, ast.Mod, ast.USub, ast.UAdd, ast.LShift, ast.RShift)
    for node in ast.walk(tree):
        if not isinstance(node, allowed) or (
                isinstance(node, ast.Constant) and not isinstance(node.value, int)):
            return None
    return int(eval(compile(tree, "<macro>", "eval")))  # only integer arithmetic remains


def model_macros(pex_dir: Path, gcc: str = "arm-none-eabi-gcc") -> dict[str, int]:
    """PEX_INPUT_SIZE, PEX_OUTPUT_SIZE, PEX_ARENA_BYTES of pex_dir/pex_model.h."""
    header = pex_dir / "pex_model.h"
    if not header.is_file():
        raise TargetError(f"{header}: not found (is {pex_dir} a generated pex_out folder?)")
    proc = _run([gcc, "-E", "-dM", "-DPEX_PORTABLE_KERNELS", "-I", str(pex_dir), "-x", "c",
                 str(header)], f"preprocessing {header}")
    defs = {}
    for line in proc.stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0] == "#define":
            defs[parts[1]] = parts[2]
    out = {}
    for name in ("PEX_INPUT_SIZE", "PEX_OUTPUT_SIZE", "PEX_ARENA_BYTES"):
        if name not in defs:
            raise TargetError(f"{header}: macro {name} is not defined")
        value = _eval_int(defs[name])
        if value is None or value <= 0:
            raise TargetError(f"{header}: {name} is not a positive integer constant "
                              f"({defs[name]!r})")
        out[name] = value
    return out


def _main_c(data: bytes) -> str:
    rows = []
    for i in range(0, len(data), 16):
        chunk = data[i:i + 16]
        rows.append("    " + ", ".join(str(b - 256 if b > 127 else b) for b in chunk) + ",")
    return (
        "/* Generated by pexopt.target.qemu: one inference of pex_invoke on a fixed input. */\n"
        "#include <stdint.h>\n\n"
        '#include "pex_harness.h"\n'
        '#include "pex_model.h"\n\n'
        f"typedef char pex_input_size_check[(PEX_INPUT_SIZE) == {len(data)} ? 1 : -1];\n\n"
        f"static const int8_t pex_test_input[{len(data)}] = {{\n" + "\n".join(rows) + "\n};\n"
        "static int8_t pex_test_output[PEX_OUTPUT_SIZE];\n\n"
        "int main(void)\n{\n"
        "    return pex_harness_run(pex_test_input, pex_test_output, PEX_OUTPUT_SIZE);\n"
        "}\n")


def _symbols(nm: str, elf: Path) -> dict[str, tuple[int, int]]:
    proc = _run([nm, "-S", "--defined-only", str(elf)], "arm-none-eabi-nm")
    syms: dict[str, tuple[int, int]] = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4:
            syms.setdefault(parts[3], (int(parts[0], 16), int(parts[1], 16)))
        elif len(parts) == 3:
            syms.setdefault(parts[2], (int(parts[0], 16), 0))
    return syms


def _sections(size: str, elf: Path) -> dict[str, int]:
    proc = _run([size, "-A", "-d", str(elf)], "arm-none-eabi-size")
    out: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _stack_frames(obj_dir: Path) -> dict[str, int]:
    frames: dict[str, int] = {}
    for su in sorted(obj_dir.glob("*.su")):
        for line in su.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1].strip().isdigit():
                name = parts[0].rsplit(":", 1)[-1]
                frames[name] = max(frames.get(name, 0), int(parts[1]))
    return frames


def _as_bytes(data: object) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    tobytes = getattr(data, "tobytes", None)
    if tobytes is None:
        raise TargetError(f"input must be bytes or an int8 array, not {type(data).__name__}")
    itemsize = getattr(data, "itemsize", 1)
    if itemsize != 1:
        raise TargetError(f"input array must have 1-byte elements (int8), not {itemsize}")
    return bytes(tobytes())


def build_firmware(pex_dir: str | os.PathLike, input: bytes, board: str = "mps2-an386",
                   work_dir: str | os.PathLike | None = None, *, stack_size: int = 64 * 1024,
                   count_insns: bool = True, opt: str = "-O2", std: str = "c99",
                   extra_cflags: Sequence[str] = ()) -> Firmware:
    """Compile pex_dir's C with the harness and `input` (PEX_INPUT_SIZE bytes) into an ELF.

    Every *.c file of pex_dir is compiled (-DPEX_PORTABLE_KERNELS, -Wall -Wextra -Werror).
    The build goes to work_dir (a new temporary folder if None). Raises ToolMissingError or
    TargetError (one line) on a missing tool, a compile error or a wrong arena size.
    """
    t0 = time.perf_counter()
    if board not in BOARDS:
        raise TargetError(f"unknown board '{board}' (known: {', '.join(BOARDS)})")
    if stack_size <= 0 or stack_size % 8:
        raise TargetError(f"stack_size must be a positive multiple of 8, not {stack_size}")
    tools = require_tools(count_insns)
    gcc = tools["arm-none-eabi-gcc"]
    if not (HARNESS_DIR / LINKER_SCRIPT).is_file():
        raise TargetError(f"harness sources not found in {HARNESS_DIR} (needs a source checkout)")
    pex_dir = Path(pex_dir)
    if not pex_dir.is_dir():
        raise TargetError(f"{pex_dir}: no such folder")
    data = _as_bytes(input)
    macros = model_macros(pex_dir, gcc)
    if len(data) != macros["PEX_INPUT_SIZE"]:
        raise TargetError(f"input has {len(data)} bytes, pex_model.h wants PEX_INPUT_SIZE = "
                          f"{macros['PEX_INPUT_SIZE']}")
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="pex_fw_"))
    obj_dir = work / "obj"
    obj_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*obj_dir.glob("*.o"), *obj_dir.glob("*.su")]:
        stale.unlink()
    main_c = work / "main.c"
    main_c.write_text(_main_c(data))

    cpu = list(BOARDS[board])
    cflags = [*cpu, opt, "-g", f"-std={std}", "-Wall", "-Wextra", "-Werror",
              "-ffunction-sections", "-fdata-sections", "-fstack-usage",
              "-DPEX_PORTABLE_KERNELS", "-I", str(pex_dir), "-I", str(HARNESS_DIR),
              *extra_cflags]
    sources = sorted(p for p in pex_dir.glob("*.c") if p.name != "main.c")
    if not sources:
        raise TargetError(f"{pex_dir}: no C sources")
    sources += [main_c] + [HARNESS_DIR / s for s in HARNESS_SOURCES]
    objs = []
    for src in sources:
        prefix = "harness_" if src.parent == HARNESS_DIR else ""
        obj = obj_dir / f"{prefix}{src.stem}.o"
        if obj in objs:
            raise TargetError(f"two sources named {src.stem}.* ({src})")
        flags = cflags if src.suffix == ".c" else [*cpu, "-g", "-I", str(HARNESS_DIR)]
        _run([gcc, *flags, "-c", str(src), "-o", str(obj)], f"compiling {src.name}", cwd=obj_dir)
        objs.append(obj)

    elf = work / "firmware.elf"
    map_file = work / "firmware.map"
    _run([gcc, *cpu, "-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs",
          "-T", str(HARNESS_DIR / LINKER_SCRIPT), "-Wl,--gc-sections",
          f"-Wl,--defsym=__pex_stack_size={stack_size}", "-Wl,--no-warn-rwx-segments",
          "-Wl,--fatal-warnings", f"-Wl,-Map={map_file}", *map(str, objs), "-lm",
          "-o", str(elf)], "linking firmware.elf")

    syms = _symbols(tools["arm-none-eabi-nm"], elf)
    for name in (ARENA_SYMBOL, "pex_invoke", "pex_mark_begin", "pex_mark_end"):
        if name not in syms:
            raise TargetError(f"symbol {name} not found in {elf.name} "
                              "(the arena must be one object named pex_arena)")
    stubs = [n for n in SYSCALL_STUBS if n in syms]
    if stubs:
        raise TargetError(f"the code needs newlib system calls ({', '.join(stubs)}: stdio, "
                          "malloc or exit?), which bare-metal firmware does not have")
    arena = syms[ARENA_SYMBOL][1]
    if arena != macros["PEX_ARENA_BYTES"]:
        raise TargetError(f"pex_arena is {arena} B in the ELF, pex_model.h says PEX_ARENA_BYTES "
                          f"= {macros['PEX_ARENA_BYTES']}")
    secs = _sections(tools["arm-none-eabi-size"], elf)

    plugin = None
    if count_insns:
        plugin = work / "insn_count.so"
        _run([tools["gcc"], "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror",
              str(HARNESS_DIR / PLUGIN_SOURCE), "-o", str(plugin)], "compiling the QEMU plugin")
    return Firmware(
        elf=elf, board=board, work_dir=work, input_size=macros["PEX_INPUT_SIZE"],
        output_size=macros["PEX_OUTPUT_SIZE"], arena_bytes=arena,
        arena_macro=macros["PEX_ARENA_BYTES"], text=secs.get(".text", 0) + secs.get(
            ".ARM.exidx", 0), data=secs.get(".data", 0), bss=secs.get(".bss", 0),
        stack_size=stack_size, symbols=syms, stack_frames=_stack_frames(obj_dir),
        plugin=plugin, map_file=map_file, build_seconds=time.perf_counter() - t0)


# -- running --------------------------------------------------------------------------------


def qemu_command(fw: Firmware, console: Path, log: Path | None) -> list[str]:
    cmd = [_tool("qemu-system-arm"), "-M", fw.board, "-nographic", "-monitor", "none",
           "-serial", "none", "-chardev", f"file,id=pexsemi,path={console}",
           "-semihosting-config", "enable=on,target=native,chardev=pexsemi",
           "-kernel", str(fw.elf)]
    if log is not None and fw.plugin is not None:
        begin = fw.symbols["pex_mark_begin"][0] & ~1
        end = fw.symbols["pex_mark_end"][0] & ~1
        cmd += ["-plugin", f"{fw.plugin},begin={begin:#x},end={end:#x}",
                "-d", "plugin", "-D", str(log)]
    return cmd


def _parse_console(text: str) -> dict[str, object]:
    out: dict[str, object] = {"hex": [], "completed": False}
    for line in text.splitlines():
        if line.startswith("PEX:OUT "):
            out["hex"].append(line[8:].strip())  # type: ignore[union-attr]
        elif line.startswith("PEX:RC "):
            out["rc"] = int(line[7:])
        elif line.startswith("PEX:STACK "):
            total, invoke = line[10:].split()
            out["stack"], out["invoke_stack"] = int(total), int(invoke)
        elif line.startswith("PEX:FAULT "):
            out["fault"] = line[10:].strip()
        elif line.strip() == "PEX:END":
            out["completed"] = True
    return out


def run_firmware(fw: Firmware, timeout: float = 60, count_insns: bool = True) -> RunResult:
    """Run fw under qemu-system-arm (semihosting, no stdin); TargetError on a timeout.

    The result carries a fault or a non-zero exit code; `.check()` turns those into errors.
    """
    console = fw.work_dir / "console.txt"
    log = fw.work_dir / "plugin.log" if count_insns and fw.plugin is not None else None
    for p in (console, log):
        if p is not None and p.exists():
            p.unlink()
    cmd = qemu_command(fw, console, log)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise TargetError(f"QEMU {fw.board} timed out after {timeout:g} s running "
                          f"{fw.elf}") from e
    seconds = time.perf_counter() - t0
    text = console.read_text(errors="replace") if console.exists() else ""
    info = _parse_console(text)
    output = None
    if info["completed"]:
        output = bytes.fromhex("".join(info["hex"]))  # type: ignore[arg-type]
        if len(output) != fw.output_size:
            raise TargetError(f"firmware printed {len(output)} output bytes, expected "
                              f"{fw.output_size}")
    insns = total = None
    if log is not None and log.exists():
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("pex-insn region="):
                insns = int(line.split("=", 1)[1]) - MARKER_OVERHEAD
            elif line.startswith("pex-insn total="):
                total = int(line.split("=", 1)[1])
    if proc.returncode != 0 and not text and "PEX" not in proc.stderr:
        err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise TargetError(f"qemu-system-arm failed (exit {proc.returncode})"
                          + (f": {err[0].strip()}" if err else ""))
    return RunResult(
        exit_code=proc.returncode, completed=bool(info["completed"]), output=output,
        invoke_rc=info.get("rc"), insns=insns, total_insns=total,  # type: ignore[arg-type]
        stack_bytes=info.get("stack"), invoke_stack_bytes=info.get("invoke_stack"),
        fault=info.get("fault"), console=text, qemu_stderr=proc.stderr,  # type: ignore[arg-type]
        seconds=seconds)


def run_on_qemu(pex_dir: str | os.PathLike, input: bytes, board: str = "mps2-an386",
                work_dir: str | os.PathLike | None = None, timeout: float = 60,
                **build_options: object) -> tuple[Firmware, RunResult]:
    """build_firmware + run_firmware + check: the firmware and a completed run."""
    fw = build_firmware(pex_dir, input, board, work_dir, **build_options)  # type: ignore[arg-type]
    return fw, run_firmware(fw, timeout=timeout).check()
