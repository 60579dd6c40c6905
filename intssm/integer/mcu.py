"""The C export on a 32-bit microcontroller: cross-compiled for Cortex-M, run in an emulator.

:func:`build` compiles a C model directory (the integer export of :mod:`intssm.integer.cexport`, or
the float32 reference of :mod:`intssm.integer.cfloat`) with ``arm-none-eabi-gcc`` for one of
:data:`TARGETS`, linked with a small harness into a bare-metal ELF; :class:`Emulator` loads it
into Unicorn (QEMU's CPU models as a library) and calls the model's functions on real inputs.

Measured, not modelled:

* **bytes**: the linked ELF's sections -- flash = ``.text`` + ``.rodata`` (the model's code and
  tables, and the libgcc/libc helpers it calls; the harness's own code and I/O buffers are in
  sections of their own and not counted), RAM = ``.data`` + ``.bss`` (the ``intssm_state`` the
  harness holds, and any library data) + the peak stack, measured by painting the stack before a
  run and finding the deepest word written;
* **instructions per step**: every instruction the emulator executes inside ``intssm_step``
  (block hook; a block's instructions counted from the disassembly);
* **estimated cycles per step**: each executed instruction weighted by the cycle count of its class
  in the core's Technical Reference Manual (:data:`CYCLES`), with ``P`` = 2 cycles of pipeline
  refill for every taken branch. Zero-wait-state memory; an estimate, not a measurement.

Toolchain: Debian's ``gcc-arm-none-eabi`` + ``libnewlib-arm-none-eabi`` (``apt-get install``);
emulator: the ``unicorn`` and ``pyelftools`` packages (the ``test`` extra).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from intssm import procs
from intssm.errors import IntssmError

GCC, OBJDUMP = "arm-none-eabi-gcc", "arm-none-eabi-objdump"
#: The RISC-V toolchain (rv32imc, ilp32; freestanding builds need no C library, picolibc is its libc)
RV_GCC, RV_OBJDUMP = "riscv64-unknown-elf-gcc", "riscv64-unknown-elf-objdump"
INSTALL_HINT = ("apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi gcc-riscv64-unknown-elf "
                "picolibc-riscv64-unknown-elf; pip install unicorn pyelftools")

FLASH_BASE, RAM_BASE, IO_BASE = 0x00000000, 0x20000000, 0x30000000
FLASH_SIZE, RAM_SIZE = 1 << 21, 1 << 19
STOP = FLASH_BASE + FLASH_SIZE - 0x100  # return address of every call from Python: a NOP pad
PAINT = 0xA5


@dataclass(frozen=True)
class Target:
    name: str
    cflags: tuple
    cpu: str  # Unicorn CPU model (unicorn.arm_const.UC_CPU_ARM_*, unicorn.riscv_const.UC_CPU_RISCV32_*)
    cycles: str | None  # key of CYCLES; None: instructions are counted, cycles not estimated
    arch: str = "arm"  # "arm" (Thumb, M profile) or "riscv" (RV32)

    @property
    def gcc(self) -> str:
        return GCC if self.arch == "arm" else RV_GCC

    @property
    def objdump(self) -> str:
        return OBJDUMP if self.arch == "arm" else RV_OBJDUMP


TARGETS = {
    "cortex-m4": Target("cortex-m4", ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=soft"), "UC_CPU_ARM_CORTEX_M4", "m4"),
    "cortex-m4f": Target("cortex-m4f", ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
                         "UC_CPU_ARM_CORTEX_M4", "m4"),
    "cortex-m3": Target("cortex-m3", ("-mcpu=cortex-m3", "-mthumb"), "UC_CPU_ARM_CORTEX_M3", "m3"),
    # ARMv6-M: Unicorn's Cortex-M0 model runs the Cortex-M0+'s instruction set
    "cortex-m0plus": Target("cortex-m0plus", ("-mcpu=cortex-m0plus", "-mthumb"), "UC_CPU_ARM_CORTEX_M0", "m0p"),
    "riscv32": Target("riscv32", ("-march=rv32imc", "-mabi=ilp32"), "UC_CPU_RISCV32_SIFIVE_E31", None, "riscv"),
}

#: Cycles per instruction class, zero wait states. Cortex-M4 Technical Reference Manual (ARM DDI
#: 0439, Table 3-1 "Processor instruction set summary"; FPU instructions from its FPU chapter) and
#: Cortex-M3 TRM (ARM DDI 0337, Table 3-1). N = registers transferred; a taken branch adds P = 2
#: (the TRMs give 1 to 3). Where the TRM gives a range (M3 long multiplies, divides), the worst case.
CYCLES = {
    "m4": {"alu": 1, "mul": 1, "mla": 1, "mull": 1, "mlal": 1, "div": 12, "ld": 2, "st": 2, "ldd": 3, "multi": "1+N",
           "branch": 1, "vld": 2, "vmulacc": 3, "vdiv": 14, "vmulti": "1+N", "valu": 1},
    "m3": {"alu": 1, "mul": 1, "mla": 2, "mull": 5, "mlal": 7, "div": 12, "ld": 2, "st": 2, "ldd": 3, "multi": "1+N",
           "branch": 1},
    # Cortex-M0+ Technical Reference Manual (ARM DDI 0484, Table 3-1 and its instruction timings):
    # loads and stores 2, MULS 1 (the single-cycle multiplier option), a taken branch 2 (P = 1, the
    # two-stage pipeline); ARMv6-M has no MLA, long multiply or divide
    "m0p": {"alu": 1, "mul": 1, "ld": 2, "st": 2, "multi": "1+N", "branch": 1},
}
TAKEN_BRANCH_REFILL = 2
#: Refill of a taken branch per cycle table (the M0+'s two-stage pipeline refills in one cycle).
REFILL = {"m4": TAKEN_BRANCH_REFILL, "m3": TAKEN_BRANCH_REFILL, "m0p": 1}

_COND = "(?:eq|ne|cs|hs|cc|lo|mi|pl|vs|vc|hi|ls|ge|lt|gt|le|al)?"
_CLASSES = (  # (class, regex on the mnemonic without its .w/.n width suffix), first match wins
    ("branch", rf"^(?:b|bl|blx|bx|cbz|cbnz){_COND}$"),
    ("multi", rf"^(?:ldm\w*|stm\w*|push|pop){_COND}$"),
    ("ldd", rf"^(?:ldrd|strd){_COND}$"),
    ("ld", rf"^ldr\w*{_COND}$"),
    ("st", rf"^str\w*{_COND}$"),
    ("vmulti", r"^(?:vldm\w*|vstm\w*|vpush|vpop)"),
    ("vld", r"^(?:vldr|vstr)"),
    ("vmulacc", r"^(?:vn?ml[as]|vfn?m[as])"),
    ("vdiv", r"^(?:vdiv|vsqrt)"),
    ("valu", r"^v"),
    ("div", rf"^[su]div{_COND}$"),
    ("mlal", rf"^[su]mlal{_COND}$"),
    ("mull", rf"^[su]mull{_COND}$"),
    ("mla", rf"^ml[as]{_COND}$"),
    ("mul", rf"^muls?{_COND}$"),
)


def instruction_class(mnemonic: str) -> str:
    """Cycle class of a Thumb mnemonic as objdump prints it (``ldrsh.w`` -> ``ld``); ``alu`` otherwise."""
    m = mnemonic.split(".")[0].lower()
    for cls, rx in _CLASSES:
        if re.match(rx, m):
            return cls
    return "alu"


def _tool(name: str) -> str:
    p = shutil.which(name)
    if p is None:
        raise IntssmError(f"{name} not found: the Cortex-M target needs it ({INSTALL_HINT})")
    return p


def available(target: str = "cortex-m4") -> bool:
    """Whether the cross-compiler of ``target`` and the emulator are installed."""
    try:
        import elftools  # noqa: F401
        import unicorn  # noqa: F401
    except ImportError:
        return False
    t = TARGETS[target]
    return shutil.which(t.gcc) is not None and shutil.which(t.objdump) is not None


LINKER_SCRIPT = f"""/* intssm bare-metal layout for the emulator: flash, RAM, and an I/O region outside both. */
MEMORY {{
    FLASH (rx) : ORIGIN = {FLASH_BASE:#x}, LENGTH = {FLASH_SIZE}
    RAM (rwx)  : ORIGIN = {RAM_BASE:#x}, LENGTH = {RAM_SIZE}
    IO (rw)    : ORIGIN = {IO_BASE:#x}, LENGTH = 64M
}}
ENTRY(harness_run)
SECTIONS {{
    .text : {{ *(.text .text.*) }} > FLASH
    .rodata : {{ *(.rodata .rodata.*) }} > FLASH
    .harness : {{ KEEP(*(.harness .harness.*)) KEEP(*(.harness_ro)) }} > FLASH
    .data : {{ *(.data .data.*) }} > RAM
    .bss (NOLOAD) : {{ *(.bss .bss.*) *(COMMON) }} > RAM
    .io (NOLOAD) : {{ *(.io .io.*) }} > IO
    /DISCARD/ : {{ *(.ARM.exidx*) *(.ARM.extab*) }}
}}
"""

HARNESS = r"""/* harness.c -- generated by intssm for the emulator; not part of the model's bytes.
 * Python writes a sequence into io_seq and calls harness_run(L); the model's state lives in .bss. */
#include <stdint.h>
#include "intssm_model.h"

#define HARNESS __attribute__((section(".harness"), noinline))
#define IO __attribute__((section(".io")))

#if defined(INTSSM_FLOAT_INPUT) && INTSSM_FLOAT_INPUT
/* a float-data model: float32 readings, turned into input codes by the model's own input path */
IO float io_raw[@MAXLEN@ * INTSSM_D_IN];
#define FEED(t) do { uint8_t p_[INTSSM_D_IN]; intssm_input_codes(io_raw + (uint32_t)(t) * INTSSM_D_IN, p_); \
                     intssm_step(&harness_state, p_); } while (0)
#else
IO uint8_t io_seq[@MAXLEN@ * INTSSM_D_IN];
#define FEED(t) intssm_step(&harness_state, io_seq + (uint32_t)(t) * INTSSM_D_IN)
#endif
#if defined(INTSSM_FLOAT)  /* the float32 reference (intssm.integer.cfloat) */
IO float io_logits[INTSSM_D_OUT];
#define FINISH() intssm_logits(&harness_state, io_logits)
#else
IO int32_t io_logits[INTSSM_D_OUT];
IO uint32_t io_counters[INTSSM_N_COUNTERS];
#define FINISH() intssm_logits(&harness_state, io_logits, io_counters)
IO int32_t io_x[2];
__attribute__((section(".harness_ro"))) const int32_t harness_dims[3] = {INTSSM_LAYERS, INTSSM_H, INTSSM_N2};
#endif
intssm_state harness_state;

HARNESS void harness_reset(void) { intssm_reset(&harness_state); }
HARNESS void harness_step(int32_t t) { FEED(t); }
HARNESS void harness_finish(void) { FINISH(); }
#if !defined(INTSSM_FLOAT)
HARNESS void harness_state_x(int32_t i, int32_t hh, int32_t n) { intssm_state_x(&harness_state, (int)i, (int)hh, (int)n, &io_x[0], &io_x[1]); }
#endif
HARNESS int32_t harness_run(int32_t L)
{
    int32_t t;
    intssm_reset(&harness_state);
    for (t = 0; t < L; ++t)
        FEED(t);
    FINISH();
    return 0;
}
"""


#: Flags of every build, and so of every published figure: C99 at -O2, each function and table in
#: a section of its own (the linker's ``--gc-sections`` keeps only what is called: code size and
#: instruction counts depend on it).
CFLAGS = ("-std=c99", "-O2", "-ffunction-sections", "-fdata-sections")
#: The integer export's builds: warning-clean under these, and freestanding -- no libc, no start
#: files; libgcc only for what the core lacks (64-bit multiplies and divisions on ARMv6-M).
INTEGER_FLAGS = ("-Wall", "-Wextra", "-Wconversion", "-Wsign-conversion", "-Werror", "-ffreestanding")
INTEGER_LDFLAGS = ("-nostdlib", "-Wl,--gc-sections", "-lgcc")
#: The float32 reference's builds: newlib (nano) for libm's erff and expf.
FLOAT_FLAGS = ("-Wall", "-Wextra", "-Werror")
FLOAT_LDFLAGS = ("--specs=nano.specs", "-nostartfiles", "-Wl,--gc-sections", "-lm", "-lc", "-lgcc")


def build_flags(target: str, libm: bool = False) -> tuple[list, list]:
    """(compile flags, link flags) of a build of the integer export (or, ``libm``, the float32
    reference) for ``target``, as :func:`build` uses them."""
    t = TARGETS[target]
    if libm:
        return [*CFLAGS, *FLOAT_FLAGS, *t.cflags], list(FLOAT_LDFLAGS)
    return [*CFLAGS, *INTEGER_FLAGS, *t.cflags], list(INTEGER_LDFLAGS)


def build(c_dir: Path, target: str, max_len: int, opt: str = "-O2", libm: bool = False) -> Path:
    """Cross-compile ``c_dir``'s ``intssm_model.c`` with the harness for ``target`` (:func:`build_flags`;
    ``libm``: the float32 reference, linked with newlib); returns the ELF
    (``c_dir/<target>/intssm.elf``, with ``-fstack-usage`` files beside it)."""
    if target not in TARGETS:
        raise IntssmError(f"unknown target {target!r}; one of {', '.join(TARGETS)}")
    t = TARGETS[target]
    gcc = _tool(t.gcc)
    out = Path(c_dir) / target
    out.mkdir(exist_ok=True)
    (out / "harness.c").write_text(HARNESS.replace("@MAXLEN@", str(int(max_len))))
    (out / "link.ld").write_text(LINKER_SCRIPT)
    elf = out / "intssm.elf"
    elf.unlink(missing_ok=True)  # an ELF left by an earlier build must not pass for this one's
    cflags, ldflags = build_flags(target, libm)
    cflags = [opt if f == "-O2" else f for f in cflags]
    cmd = [gcc, *cflags, "-fstack-usage", f"-I{Path(c_dir).resolve()}", "-T", "link.ld", "-o", elf.name,
           str((Path(c_dir) / "intssm_model.c").resolve()), "harness.c", *ldflags]
    procs.run(cmd, cwd=out, what=f"{t.gcc} ({target})")
    return procs.check_elf(elf, t.gcc, "EM_RISCV" if t.arch == "riscv" else "EM_ARM", ("intssm_step",))


def _disassembly(elf: Path, target: str = "cortex-m4") -> dict:
    """address -> (size in bytes, mnemonic, registers in its list, whether it ends the block's flow)
    of every instruction in the ELF's executable sections (literal pools left out)."""
    t = TARGETS[target]
    r = procs.run([_tool(t.objdump), "-d", str(elf)], what=t.objdump)
    out = {}
    if t.arch == "riscv":  # one hex word per instruction, 2 (compressed) or 4 bytes; no cycle classes
        rv = re.compile(r"^\s*([0-9a-f]+):\s+([0-9a-f]{4}|[0-9a-f]{8})\s+(\S+)")
        for line in r.stdout.splitlines():
            m = rv.match(line)
            if m is not None:
                out[int(m.group(1), 16)] = (len(m.group(2)) // 2, m.group(3), 0, False)
    else:
        _arm_instructions(r.stdout, out)
    if not out:
        raise IntssmError(f"{t.objdump} exited 0 but printed no instructions for {elf}; the toolchain is broken")
    return out


def _arm_instructions(listing: str, out: dict) -> None:
    """Thumb instructions of an objdump listing into ``out`` (see :func:`_disassembly`)."""
    rx = re.compile(r"^\s*([0-9a-f]+):\s+((?:[0-9a-f]{4}\s)+)\s*(\S+)\s*([^;@]*)")
    for line in listing.splitlines():
        m = rx.match(line)
        if m is None or m.group(3).startswith("."):
            continue
        mnem, ops = m.group(3), m.group(4)
        lst = re.search(r"\{([^}]*)\}", ops)
        regs = 0
        if lst:
            for part in lst.group(1).split(","):
                a, _, b = part.strip().partition("-")
                regs += (int(re.sub(r"\D", "", b)) - int(re.sub(r"\D", "", a)) + 1) if b else 1
        cls = instruction_class(mnem)
        flow = cls == "branch" or (cls == "multi" and lst is not None and "pc" in lst.group(1))
        out[int(m.group(1), 16)] = (2 * len(m.group(2).split()), mnem, regs, flow)


@dataclass
class Sizes:
    text: int
    rodata: int
    data: int
    bss: int

    @property
    def flash(self) -> int:
        return self.text + self.rodata + self.data  # .data's initial values live in flash too

    @property
    def static_ram(self) -> int:
        return self.data + self.bss


def sizes(elf: Path) -> Sizes:
    from elftools.elf.elffile import ELFFile

    with open(elf, "rb") as f:
        secs = {s.name: s["sh_size"] for s in ELFFile(f).iter_sections()}
    return Sizes(secs.get(".text", 0), secs.get(".rodata", 0), secs.get(".data", 0), secs.get(".bss", 0))


class Emulator:
    """The ELF loaded into Unicorn's Cortex-M model; :meth:`call` runs one function to its return."""

    def __init__(self, elf: Path, target: str):
        import unicorn
        from unicorn import arm_const, riscv_const
        from elftools.elf.elffile import ELFFile

        t = TARGETS[target]
        self.target, self.elf = t, Path(elf)
        if t.arch == "riscv":
            self.uc = uc = unicorn.Uc(unicorn.UC_ARCH_RISCV, unicorn.UC_MODE_RISCV32)
            uc.ctl_set_cpu_model(getattr(riscv_const, t.cpu))
        else:
            self.uc = uc = unicorn.Uc(unicorn.UC_ARCH_ARM, unicorn.UC_MODE_THUMB | unicorn.UC_MODE_MCLASS)
            uc.ctl_set_cpu_model(getattr(arm_const, t.cpu))
        with open(elf, "rb") as f:
            ef = ELFFile(f)
            self.sym = {s.name: (s["st_value"], s["st_size"]) for s in ef.get_section_by_name(".symtab").iter_symbols()}
            loads = [(s["p_vaddr"], s.data()) for s in ef.iter_segments() if s["p_type"] == "PT_LOAD"]
            io_end = max((s["sh_addr"] + s["sh_size"] for s in ef.iter_sections() if s.name == ".io"), default=IO_BASE)
            self.bss_end = max((s["sh_addr"] + s["sh_size"] for s in ef.iter_sections() if s.name in (".bss", ".data")),
                               default=RAM_BASE)
        uc.mem_map(FLASH_BASE, FLASH_SIZE)
        uc.mem_map(RAM_BASE, RAM_SIZE)
        uc.mem_map(IO_BASE, max(0x1000, (io_end - IO_BASE + 0xFFF) & ~0xFFF))
        for addr, blob in loads:
            if blob:
                uc.mem_write(addr, blob)
        if t.arch == "riscv":
            uc.mem_write(STOP, b"\x13\x00\x00\x00" * 4)  # NOPs (addi x0, x0, 0): where every call returns
            self._regs = [riscv_const.UC_RISCV_REG_A0, riscv_const.UC_RISCV_REG_A1, riscv_const.UC_RISCV_REG_A2,
                          riscv_const.UC_RISCV_REG_A3]
            self._sp, self._lr, self._r0 = riscv_const.UC_RISCV_REG_SP, riscv_const.UC_RISCV_REG_RA, riscv_const.UC_RISCV_REG_A0
            self._thumb = 0
        else:
            uc.mem_write(STOP, b"\x00\xbf" * 8)  # NOPs: where every call returns
            self._regs = [arm_const.UC_ARM_REG_R0, arm_const.UC_ARM_REG_R1, arm_const.UC_ARM_REG_R2, arm_const.UC_ARM_REG_R3]
            self._sp, self._lr, self._r0 = arm_const.UC_ARM_REG_SP, arm_const.UC_ARM_REG_LR, arm_const.UC_ARM_REG_R0
            self._thumb = 1  # the Thumb bit of every code address
        self.stack_top = RAM_BASE + RAM_SIZE
        self._disasm = None
        self._blocks: dict = {}
        self._cyc = CYCLES[t.cycles] if t.cycles else {}
        self._refill = REFILL.get(t.cycles, 0)

    def addr(self, name: str) -> int:
        if name not in self.sym:
            raise IntssmError(f"symbol {name} not in the ELF")
        return self.sym[name][0]

    def write(self, name: str, arr: np.ndarray) -> None:
        self.uc.mem_write(self.addr(name), np.ascontiguousarray(arr).tobytes())

    def read(self, name: str, dtype, count: int) -> np.ndarray:
        dt = np.dtype(dtype)
        return np.frombuffer(bytes(self.uc.mem_read(self.addr(name), dt.itemsize * count)), dtype=dt).copy()

    def paint_stack(self) -> None:
        self.uc.mem_write(self.bss_end, bytes([PAINT]) * (self.stack_top - self.bss_end))

    def stack_peak(self) -> int:
        """Bytes of stack used since :meth:`paint_stack` (the deepest word that no longer holds the paint)."""
        mem = bytes(self.uc.mem_read(self.bss_end, self.stack_top - self.bss_end))
        i = next((k for k, b in enumerate(mem) if b != PAINT), len(mem))
        return len(mem) - (i & ~3)

    def call(self, name: str, *args: int) -> int:
        for r, a in zip(self._regs, args):
            self.uc.reg_write(r, a & 0xFFFFFFFF)
        self.uc.reg_write(self._sp, self.stack_top)
        self.uc.reg_write(self._lr, STOP | self._thumb)
        try:
            self.uc.emu_start(self.addr(name) | self._thumb, STOP)
        except Exception as e:  # unicorn.UcError: a fault in the generated code
            raise IntssmError(f"emulated {self.target.name} faulted in {name}: {e}") from None
        return self.uc.reg_read(self._r0)

    # -------------------------------------------------------------- instruction and cycle counts ---

    def _block_cost(self, addr: int, size: int) -> tuple[int, int, bool]:
        """(instructions, cycles without refills, whether it ends in a branch) of one executed block."""
        n = cyc = 0
        flow = False
        a = addr
        while a < addr + size:
            if a not in self._disasm:
                raise IntssmError(f"no instruction at {a:#x} in the disassembly")
            nb, mnem, regs, flow = self._disasm[a]
            c = self._cyc.get(instruction_class(mnem), 1)
            cyc += (1 + regs) if c == "1+N" else c
            n += 1
            a += nb
        return n, cyc, flow

    def count(self, name: str, *args: int) -> tuple[int, int]:
        """(instructions, estimated cycles) of one call of ``name``."""
        import unicorn

        if self._disasm is None:
            self._disasm = _disassembly(self.elf, self.target.name)
        stats = [0, 0, None]  # instructions, cycles, end address of the previous block if it ended in a branch

        def hook(uc, addr, size, _):
            key = (addr, size)
            b = self._blocks.get(key)
            if b is None:
                b = self._blocks[key] = self._block_cost(addr, size)
            if stats[2] is not None and stats[2] != addr:
                stats[1] += self._refill
            stats[0] += b[0]
            stats[1] += b[1]
            stats[2] = addr + size if b[2] else None

        h = self.uc.hook_add(unicorn.UC_HOOK_BLOCK, hook)
        self.uc.ctl_flush_tb()  # blocks translated before the hook was added would not call it
        try:
            self.call(name, *args)
        finally:
            self.uc.hook_del(h)
            self.uc.ctl_flush_tb()
        if stats[2] is not None and stats[2] != STOP:  # the final return is a taken branch
            stats[1] += self._refill
        return stats[0], stats[1]


# ------------------------------------------------------------------------------ measurement ---

def measure(elf: Path, target: str, P: np.ndarray, count_steps: int = 64, progress=None,
            lengths: np.ndarray | None = None) -> dict:
    """Run sequences ``P`` (n, L, d_in) through the ELF's harness -- uint8 input codes, or, for a
    float-data model's export, float32 readings, which its C input path turns into codes (then a
    step's counts include that) -- sequence b for its first ``lengths[b]`` steps (None: all L);
    count instructions and cycles over the first ``count_steps`` steps of the first sequence. Returns the sizes, the peak stack, the per-step
    counts, and per sequence the logits (and, for an integer model, the counters and the final
    state, read with ``intssm_state_x``)."""
    emu = Emulator(elf, target)
    sz = sizes(elf)
    n, L, _ = P.shape
    lengths = np.full(n, L) if lengths is None else np.asarray(lengths)
    is_float = "io_counters" not in emu.sym
    n_out = emu.sym["io_logits"][1] // 4
    logits, counters, states = [], [], []
    peak = 0
    raw = "io_raw" in emu.sym
    if raw != (P.dtype == np.float32):
        raise IntssmError(f"this build takes {'float32 readings' if raw else 'uint8 codes'}, got {P.dtype} data")
    feed = ("io_raw", np.float32) if raw else ("io_seq", np.uint8)
    for b in range(n):
        emu.write(feed[0], np.ascontiguousarray(P[b], dtype=feed[1]))
        emu.paint_stack()
        emu.call("harness_run", int(lengths[b]))
        peak = max(peak, emu.stack_peak())
        logits.append(emu.read("io_logits", np.float32 if is_float else np.int32, n_out))
        if not is_float:
            counters.append(emu.read("io_counters", np.uint32, emu.sym["io_counters"][1] // 4).astype(np.int64))
            states.append(_final_state(emu))
        if progress:
            progress(1)
    steps = min(count_steps, int(lengths[0]))
    emu.write(feed[0], np.ascontiguousarray(P[0], dtype=feed[1]))
    emu.call("harness_reset")
    instr = cyc = 0
    for t in range(steps):
        i_, c_ = emu.count("harness_step", t)
        instr, cyc = instr + i_, cyc + c_
    fin_i, fin_c = emu.count("harness_finish")
    return {"target": target, "text": sz.text, "rodata": sz.rodata, "data": sz.data, "bss": sz.bss,
            "flash_bytes": sz.flash, "stack_peak_bytes": peak, "stack_frames": stack_usage(elf), "ram_bytes": sz.static_ram + peak,
            "steps_counted": steps, "instructions_per_step": instr / steps,
            "cycles_per_step": cyc / steps if emu.target.cycles else None,  # no cycle table: instructions only
            "finish_instructions": fin_i, "finish_cycles": fin_c if emu.target.cycles else None,
            "logits": np.array(logits), "counters": np.array(counters) if counters else None,
            "states": states}


def stack_usage(elf: Path) -> dict:
    """function -> bytes of its own stack frame, from the compiler's ``-fstack-usage`` files beside
    ``elf`` (the model's functions; the harness's are left out)."""
    out = {}
    for su in Path(elf).parent.glob("*.su"):
        if "harness" in su.name:
            continue
        for line in su.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1].isdigit():
                out[parts[0].rsplit(":", 1)[-1]] = int(parts[1])
    return out


def _final_state(emu: Emulator) -> tuple[np.ndarray, np.ndarray]:
    """(x_re, x_im) codes of the harness's state, read through the model's ``intssm_state_x``."""
    nl, H, N2 = (int(v) for v in emu.read("harness_dims", np.int32, 3))
    re, im = np.zeros((nl, H, N2), np.int64), np.zeros((nl, H, N2), np.int64)
    for i in range(nl):
        for h in range(H):
            for n in range(N2):
                emu.call("harness_state_x", i, h, n)
                re[i, h, n], im[i, h, n] = emu.read("io_x", np.int32, 2)
    return re, im
