"""Run bare-metal Cortex-M firmware of generated C (a `pex_out/` folder) in QEMU.

Building is `qemu_build.build_firmware`: a `main.c` holding one input as a const array, the
harness of `codegen/qemu/` and the generated sources linked into an ELF, with its sections and
the `pex_arena` symbol measured. `run_firmware` runs the ELF under `qemu-system-arm` with
semihosting and the `insn_count` TCG plugin, and returns the output bytes, exit code, stack
high-water mark and the exact number of instructions executed inside `pex_invoke`;
`run_on_qemu` does both. The build's public names are re-exported here, so callers import
everything from `pexopt.target.qemu`.

Needs `arm-none-eabi-gcc` (+ newlib for memcpy/memset/expf), `qemu-system-arm` and a host `gcc`
for the plugin: `apt-get install -y --no-install-recommends gcc-arm-none-eabi
libnewlib-arm-none-eabi qemu-system-arm`.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pexopt.target.qemu_build import (
    BOARDS,
    Firmware,
    TargetError,
    ToolMissingError,
    _tool,
    build_firmware,
    missing_tools,
    require_tools,
)
from pexopt.target.qemu_build import _eval_int as _eval_int  # tests/test_qemu.py reads it here

__all__ = [
    "BOARDS", "EXIT_FAULT", "EXIT_INVOKE_ERROR", "EXIT_OK", "EXIT_STACK_OVERFLOW",
    "MARKER_OVERHEAD", "Firmware", "RunResult", "TargetError", "ToolMissingError",
    "build_firmware", "missing_tools", "qemu_command", "require_tools", "run_firmware",
    "run_on_qemu",
]

# Exit codes of the firmware (codegen/qemu/pex_harness.h).
EXIT_OK = 0
EXIT_INVOKE_ERROR = 64
EXIT_FAULT = 65
EXIT_STACK_OVERFLOW = 66

# Instructions counted by the plugin that are not pex_invoke's own: pex_mark_begin's `bx lr`,
# `bl pex_invoke` and `bl pex_mark_end` (codegen/qemu/pex_harness_asm.S).
MARKER_OVERHEAD = 3


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
