"""Build generated C (a `pex_out/` folder) into bare-metal Cortex-M firmware for QEMU.

`build_firmware` writes a `main.c` holding one input as a const array, compiles it with the
harness of `codegen/qemu/` (vector table, reset with FPU enable and stack painting, a fault
handler that reports and exits with `EXIT_FAULT`, semihosting console) and the generated
sources, links with `codegen/qemu/link.ld` and measures `.text`/`.data`/`.bss` and the
`pex_arena` symbol (the ELF readers `_symbols`, `_sections`, `_stack_frames`). Running it is
`pexopt.target.qemu`'s job; the tool discovery, errors and board table that both use are here.

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
    tools = _check_request(board, stack_size, count_insns)
    gcc = tools["arm-none-eabi-gcc"]
    pex_dir, data, macros = _read_model(pex_dir, input, gcc)
    work, obj_dir, main_c = _prepare_work(work_dir, data)

    cpu = list(BOARDS[board])
    objs = _compile(gcc, cpu, pex_dir, main_c, obj_dir, opt, std, extra_cflags)
    elf, map_file = _link(gcc, cpu, work, objs, stack_size)
    syms, arena = _check_elf(tools["arm-none-eabi-nm"], elf, macros)
    secs = _sections(tools["arm-none-eabi-size"], elf)

    plugin = _build_plugin(tools["gcc"], work) if count_insns else None
    return Firmware(
        elf=elf, board=board, work_dir=work, input_size=macros["PEX_INPUT_SIZE"],
        output_size=macros["PEX_OUTPUT_SIZE"], arena_bytes=arena,
        arena_macro=macros["PEX_ARENA_BYTES"], text=secs.get(".text", 0) + secs.get(
            ".ARM.exidx", 0), data=secs.get(".data", 0), bss=secs.get(".bss", 0),
        stack_size=stack_size, symbols=syms, stack_frames=_stack_frames(obj_dir),
        plugin=plugin, map_file=map_file, build_seconds=time.perf_counter() - t0)


def _check_request(board: str, stack_size: int, count_insns: bool) -> dict[str, str]:
    """The board and stack size are valid; the tools' paths."""
    if board not in BOARDS:
        raise TargetError(f"unknown board '{board}' (known: {', '.join(BOARDS)})")
    if stack_size <= 0 or stack_size % 8:
        raise TargetError(f"stack_size must be a positive multiple of 8, not {stack_size}")
    return require_tools(count_insns)


def _read_model(pex_dir: str | os.PathLike, input: bytes,
                gcc: str) -> tuple[Path, bytes, dict[str, int]]:
    """The harness and pex_dir exist and `input` has PEX_INPUT_SIZE bytes: the folder, the
    input bytes and pex_model.h's macros."""
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
    return pex_dir, data, macros


def _prepare_work(work_dir: str | os.PathLike | None, data: bytes) -> tuple[Path, Path, Path]:
    """The work folder with an empty obj/ (stale objects and .su files removed) and main.c."""
    work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="pex_fw_"))
    obj_dir = work / "obj"
    obj_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*obj_dir.glob("*.o"), *obj_dir.glob("*.su")]:
        stale.unlink()
    main_c = work / "main.c"
    main_c.write_text(_main_c(data))
    return work, obj_dir, main_c


def _compile(gcc: str, cpu: list[str], pex_dir: Path, main_c: Path, obj_dir: Path, opt: str,
             std: str, extra_cflags: Sequence[str]) -> list[Path]:
    """Every C source of pex_dir, main.c and the harness compiled into obj_dir: the objects."""
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
    return objs


def _link(gcc: str, cpu: list[str], work: Path, objs: list[Path],
          stack_size: int) -> tuple[Path, Path]:
    """firmware.elf and its map file linked from objs."""
    elf = work / "firmware.elf"
    map_file = work / "firmware.map"
    _run([gcc, *cpu, "-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs",
          "-T", str(HARNESS_DIR / LINKER_SCRIPT), "-Wl,--gc-sections",
          f"-Wl,--defsym=__pex_stack_size={stack_size}", "-Wl,--no-warn-rwx-segments",
          "-Wl,--fatal-warnings", f"-Wl,-Map={map_file}", *map(str, objs), "-lm",
          "-o", str(elf)], "linking firmware.elf")
    return elf, map_file


def _check_elf(nm: str, elf: Path,
               macros: dict[str, int]) -> tuple[dict[str, tuple[int, int]], int]:
    """The ELF's symbols and arena size, checked: markers present, no system calls, the arena
    as large as PEX_ARENA_BYTES."""
    syms = _symbols(nm, elf)
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
    return syms, arena


def _build_plugin(host_gcc: str, work: Path) -> Path:
    """The insn_count TCG plugin compiled with the host C compiler."""
    plugin = work / "insn_count.so"
    _run([host_gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror",
          str(HARNESS_DIR / PLUGIN_SOURCE), "-o", str(plugin)], "compiling the QEMU plugin")
    return plugin
