"""Running generated C on targets: bare-metal Cortex-M firmware under QEMU (`qemu`)."""

from pexopt.target.qemu import (
    BOARDS,
    EXIT_FAULT,
    EXIT_INVOKE_ERROR,
    EXIT_OK,
    EXIT_STACK_OVERFLOW,
    Firmware,
    RunResult,
    TargetError,
    ToolMissingError,
    build_firmware,
    missing_tools,
    require_tools,
    run_firmware,
    run_on_qemu,
)

__all__ = [
    "BOARDS", "EXIT_FAULT", "EXIT_INVOKE_ERROR", "EXIT_OK", "EXIT_STACK_OVERFLOW", "Firmware",
    "RunResult", "TargetError", "ToolMissingError", "build_firmware", "missing_tools",
    "require_tools", "run_firmware", "run_on_qemu",
]
