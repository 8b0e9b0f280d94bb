"""Blank out code of libtorch_cpu that an inference-only TorchScript runtime never executes.

Why: the self-contained wheel vendors libtorch_cpu (345 MB stripped), which alone deflates to
about 101 MiB, over PyPI's default 100 MiB file limit. Rebuilding libtorch takes hours, but a
stock libtorch carries much that only training, tracing, export or distributed work reaches.
Overwriting those functions' bytes with trap instructions keeps every symbol, address and
relocation intact (nothing is relinked), and the blanked ranges deflate to almost nothing.
Should a blanked function run after all, the process stops at once on the trap
(SIGTRAP/SIGILL) rather than computing anything wrong.

How a function is chosen (README.md argues each rule):
1. its mangled name matches a rule: it belongs to, or exists only to call into, a subsystem that
   is entered only through an indirect door this runtime never opens (a dispatch key it never
   enables, autograd's backward pass, torch.distributed, ...);
2. it is not a registration function, static initialiser, constructor or destructor;
3. no kept code calls it directly. Every direct call and jump (through the PLT and GOT too) in
   the library is decoded, and a candidate reachable from kept code is kept, transitively: this
   is what keeps, e.g., the lazy-tensor helpers that static initialisers call while the
   library loads. If such a call reaches an ATen backward op's entry point, that op is kept whole.
Bytes are blanked only where no kept symbol covers them (identical-code folding, aliases).

Only the unstripped library works (rules read .symtab). Standard library only: this runs in
cibuildwheel's manylinux containers.
"""

from __future__ import annotations

import argparse
import bisect
import json
import re
import struct
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

EM_X86_64 = 62
EM_AARCH64 = 183
SHT_SYMTAB, SHT_RELA, SHT_DYNSYM = 2, 4, 11
SHF_EXECINSTR = 0x4
STT_FUNC = 2
# Relocations that fill a GOT slot with a symbol's address (JUMP_SLOT, GLOB_DAT, 64-bit absolute).
GOT_RELOCS = {EM_X86_64: {7, 6, 1}, EM_AARCH64: {1026, 1025, 257}}

# int3 on x86-64: one byte, so a jump to any offset of a blanked range still traps.
# On aarch64 the all-zero word is "udf #0", permanently undefined.
FILL = {EM_X86_64: b"\xcc", EM_AARCH64: b"\x00\x00\x00\x00"}

# Registration functions and static initialisers run while the library loads; constructors and
# destructors may belong to static objects (destructors are called at exit through a pointer).
# Type-erasure helpers (std::function managers, shared_ptr control blocks) run through pointers
# whenever such an object is copied or destroyed, static ones included; operator registration
# calls the type getters of every argument through pointers while it infers schemas.
PROTECTED = re.compile(
    r"TORCH_LIBRARY|_GLOBAL__sub_I|_GLOBAL__sub_D|C[123][EI]|D[012]E|7Library"
    r"|_M_manager|_M_dispose|_M_destroy|_M_get_deleter|_Base_manager|_S_manage|17release_resources"
    r"|getTypePtr|getFakeTypePtr|getMaybeFakeTypePtr"
)


@dataclass(frozen=True)
class Rule:
    name: str
    why: str
    match: Callable[[str], bool]


def _contains(*fragments: str) -> Callable[[str], bool]:
    pattern = re.compile("|".join(fragments))
    return lambda name: pattern.search(name) is not None


def _backward_identifiers(name: str) -> set[str]:
    """Identifiers naming backward ops in a mangled name ("18threshold_backward" -> threshold_backward).

    Every digit position is tried as a length prefix: that over-collects, which only keeps more.
    """
    out = set()
    for m in re.finditer(r"(?=(\d+))", name):
        digits = m.group(1)
        start = m.start() + len(digits)
        ident = name[start:start + int(digits)]
        if "_backward" in ident and re.fullmatch(r"\w+", ident):
            out.add(ident)
    return out


def _backward(name: str) -> bool:
    # ATen ops named *_backward, their kernels, lambdas, dispatcher stubs and wrappers; not the
    # autograd engine, which Tensor.backward() enters but this runtime never calls.
    return "_backward" in name and "2at" in name and not name.startswith("_ZN5torch8autograd6Engine")


RULES = (
    Rule("autograd backward functions",
         "Node::apply of generated backward nodes runs only inside autograd's backward pass, and every "
         "call of the runtime runs under InferenceMode",
         _contains(r"_ZN5torch8autograd9generated\d+\w+?(?:5apply|16apply_with_saved|13compiled_args)E")),
    Rule("backward kernels",
         "ATen ops named *_backward are called by autograd's derivative formulas, not by forward ops "
         "(a direct call from kept code keeps the op)",
         _backward),
    Rule("tracer kernels",
         "the Tracer dispatch key is only enabled inside torch.jit.trace",
         _contains(r"5torch9TraceType")),
    Rule("functionalization kernels",
         "the Functionalize dispatch key is only enabled by functionalize / torch.compile / torch.export",
         _contains(r"2at17functionalization(?!4impl|8ViewMeta|21FunctionalStorageImpl)")),
    Rule("lazy tensor core",
         "LazyTensor (torch._lazy) only runs for tensors on the 'lazy' device",
         _contains(r"5torch4lazy")),
    Rule("ONNX export",
         "ONNX export and its schema library are used by torch.onnx only",
         _contains(r"10onnx_torch", r"5torch3jit4onnx")),
    Rule("distributed",
         "process groups (c10d, gloo, tensorpipe), RPC and distributed autograd need torch.distributed, "
         "which a single-process inference runtime never initialises",
         _contains(r"4c10d", r"4gloo", r"10tensorpipe", r"5torch11distributed")),
    Rule("AOTInductor",
         "the AOTInductor runner and its C shim load .pt2 packages, not TorchScript",
         _contains(r"^aoti_torch", r"5torch12aot_inductor", r"5torch8inductor")),
    Rule("C++ optimizers",
         "torch::optim is the C++ training API",
         _contains(r"5torch5optim")),
)


# Cheap test first: most of the ~450k symbols match no rule at all.
_ANY_RULE = re.compile(
    r"_backward|5torch8autograd9generated|5torch9TraceType|2at17functionalization|5torch4lazy"
    r"|10onnx_torch|5torch3jit4onnx|4c10d|4gloo|10tensorpipe|5torch11distributed|aoti_torch|5torch12aot_inductor"
    r"|5torch8inductor|5torch5optim"
)


class ElfError(Exception):
    pass


@dataclass
class Section:
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int

    def data(self, elf: bytes | bytearray) -> memoryview:
        return memoryview(elf)[self.offset:self.offset + self.size]


def _cstr(data: bytes | bytearray, at: int) -> str:
    return bytes(data[at:data.index(b"\0", at)]).decode("utf-8", "replace")


def _sections(data: bytes | bytearray) -> tuple[int, list[Section]]:
    if data[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ElfError("only 64-bit little-endian ELF is supported")
    machine = struct.unpack_from("<H", data, 18)[0]
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    raw = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = raw[shstrndx][4]
    return machine, [Section(_cstr(data, names_at + r[0]), r[1], r[2], r[3], r[4], r[5], r[6]) for r in raw]


def _symbols(data, sections: list[Section], table: Section):
    strtab = sections[table.link]
    for st_name, st_info, _other, shndx, value, size in struct.iter_unpack("<IBBHQQ", table.data(data)):
        yield st_name + strtab.offset, st_info & 0xF, shndx, value, size


def _got_targets(data, machine: int, sections: list[Section]) -> dict[int, int]:
    """GOT slot address -> address of the (defined) function the dynamic linker puts there."""
    dynsym = next((s for s in sections if s.type == SHT_DYNSYM), None)
    if dynsym is None:
        return {}
    values = [value if shndx else 0 for _n, _t, shndx, value, _s in _symbols(data, sections, dynsym)]
    out = {}
    for sec in sections:
        if sec.type != SHT_RELA:
            continue
        for offset, info, _addend in struct.iter_unpack("<QQq", sec.data(data)):
            if (info & 0xFFFFFFFF) in GOT_RELOCS[machine] and values[info >> 32]:
                out[offset] = values[info >> 32]
    return out


def _plt_targets(data, machine: int, sections: list[Section], got: dict[int, int]) -> dict[int, int]:
    """PLT entry address -> address of the function it jumps to."""
    out = {}
    for sec in sections:
        if sec.name not in (".plt", ".plt.sec"):
            continue
        code = sec.data(data)
        if machine == EM_X86_64:
            for m in re.finditer(rb"\xff\x25", code):
                i = m.start()
                got_addr = sec.addr + i + 6 + struct.unpack_from("<i", code, i + 2)[0]
                if got_addr in got:
                    out[sec.addr + (i & ~15)] = got[got_addr]
        else:
            for i in range(0, len(code) - 8, 4):
                adrp, ldr = struct.unpack_from("<II", code, i)
                if adrp & 0x9F00001F == 0x90000010 and ldr & 0xFFC003FF == 0xF9400211:
                    page = ((sec.addr + i) & ~0xFFF) + (_sext(((adrp >> 29) & 3) | ((adrp >> 3) & ~3 & 0x1FFFFC), 21) << 12)
                    got_addr = page + ((ldr >> 10) & 0xFFF) * 8
                    if got_addr in got:
                        out[sec.addr + i] = got[got_addr]
    return out


def _sext(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def _direct_edges(data, machine: int, sections: list[Section], wanted: set[int]) -> list[tuple[int, int]]:
    """(call site, callee) for direct calls/jumps whose callee (after PLT/GOT) starts a wanted symbol.

    On x86-64 the byte scan also decodes bytes that are not instruction starts; a false edge
    can only keep a function that could have been blanked, never the reverse.
    """
    got = _got_targets(data, machine, sections)
    plt = _plt_targets(data, machine, sections, got)

    def resolve(target: int) -> int:
        return plt.get(target, target)

    edges = []
    for sec in sections:
        if not sec.flags & SHF_EXECINSTR or sec.name in (".plt", ".plt.sec"):
            continue
        code = sec.data(data)
        base = sec.addr
        if machine == EM_X86_64:
            # call rel32, jmp rel32, jcc rel32, call/jmp *GOT(%rip)
            for m in re.finditer(rb"[\xe8\xe9]|\x0f[\x80-\x8f]|\xff[\x15\x25]", code):
                i = m.start()
                op = code[i]
                if op in (0xE8, 0xE9):
                    if i + 5 > len(code):
                        continue
                    target = resolve(base + i + 5 + struct.unpack_from("<i", code, i + 1)[0])
                elif op == 0x0F:
                    if i + 6 > len(code):
                        continue
                    target = resolve(base + i + 6 + struct.unpack_from("<i", code, i + 2)[0])
                else:
                    if i + 6 > len(code):
                        continue
                    target = got.get(base + i + 6 + struct.unpack_from("<i", code, i + 2)[0], 0)
                if target in wanted:
                    edges.append((base + i, target))
        else:
            for k, (word,) in enumerate(struct.iter_unpack("<I", code[: len(code) & ~3])):
                if word & 0x7C000000 == 0x14000000:  # B / BL imm26
                    target = resolve(base + 4 * k + 4 * _sext(word & 0x3FFFFFF, 26))
                    if target in wanted:
                        edges.append((base + 4 * k, target))
    return edges


def _merge(intervals) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _subtract(drop: list[tuple[int, int]], keep: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """drop minus keep, both merged and sorted."""
    out, j = [], 0
    for a, b in drop:
        while j < len(keep) and keep[j][1] <= a:
            j += 1
        k, cur = j, a
        while k < len(keep) and keep[k][0] < b:
            if keep[k][0] > cur:
                out.append((cur, keep[k][0]))
            cur = max(cur, keep[k][1])
            k += 1
        if cur < b:
            out.append((cur, b))
    return out


def _covered(merged: list[tuple[int, int]], starts: list[int], addr: int) -> bool:
    i = bisect.bisect_right(starts, addr) - 1
    return i >= 0 and merged[i][0] <= addr < merged[i][1]


def plan(data: bytes | bytearray, rules=RULES) -> dict:
    """Which file ranges to blank, and a per-rule account."""
    machine, sections = _sections(data)
    if machine not in FILL:
        raise ElfError(f"unsupported machine {machine} (x86-64 and aarch64 only)")
    symtab = next((s for s in sections if s.type == SHT_SYMTAB), None)
    if symtab is None:
        raise ElfError("no .symtab: pruning needs the unstripped library, as the torch wheel ships it")
    code = {i for i, s in enumerate(sections) if s.flags & SHF_EXECINSTR}

    # Candidates by rule; everything else with code is kept.
    names: list[str] = []
    cand: list[tuple[int, int, int]] = []  # (start, end, rule index) in addresses
    keep: list[tuple[int, int]] = []
    for name_at, typ, shndx, value, size in _symbols(data, sections, symtab):
        if size == 0 or shndx not in code:
            continue
        rule = None
        if typ == STT_FUNC:
            name = _cstr(data, name_at)
            if _ANY_RULE.search(name) and not PROTECTED.search(name):
                rule = next((i for i, r in enumerate(rules) if r.match(name)), None)
        if rule is None:
            keep.append((value, value + size))
        else:
            names.append(name)
            cand.append((value, value + size, rule))

    by_start: dict[int, list[int]] = defaultdict(list)
    for idx, (start, _end, _r) in enumerate(cand):
        by_start[start].append(idx)
    edges = _direct_edges(data, machine, sections, set(by_start))

    # Reachability from kept code over direct calls: sources are looked up per call site.
    kept_merged = _merge(keep)
    kept_starts = [a for a, _ in kept_merged]
    order = sorted(range(len(cand)), key=lambda i: cand[i][0])
    cand_starts = [cand[i][0] for i in order]
    calls_from: dict[int, list[int]] = defaultdict(list)  # candidate index -> callees; -1 = kept code
    for site, target in edges:
        if _covered(kept_merged, kept_starts, site):
            calls_from[-1].append(target)
            continue
        # The candidate starting last before the site owns it (aliases share its start); a site
        # outside every symbol counts as kept code.
        pos = bisect.bisect_right(cand_starts, site) - 1
        owner = order[pos] if pos >= 0 and site < cand[order[pos]][1] else -1
        for idx in by_start[cand[owner][0]] if owner >= 0 else [-1]:
            calls_from[idx].append(target)

    restored: set[int] = set()
    backward_ops: set[str] = set()

    def restore_from(sources: list[int]) -> None:
        stack = list(sources)
        while stack:
            for target in calls_from.get(stack.pop(), ()):
                for idx in by_start[target]:
                    if idx not in restored:
                        restored.add(idx)
                        stack.append(idx)
                        op = re.match(r"_ZN2at4_ops\d+(\w+?_backward\w*?)(?:\d+(?:call|redispatch))E", names[idx])
                        if op:
                            backward_ops.add(op.group(1))

    restore_from([-1])
    # A forward path that calls a backward op's entry point reaches its kernel through the
    # dispatcher, which no call scan can see: keep everything of that op.
    ops_named = {i: _backward_identifiers(n) for i, n in enumerate(names) if "_backward" in n}
    seen_ops: set[str] = set()
    while backward_ops - seen_ops:
        new = backward_ops - seen_ops
        seen_ops |= new
        extra = [i for i, ops in ops_named.items() if i not in restored and ops & new]
        restored.update(extra)
        restore_from(extra)

    per_rule = {r.name: {"why": r.why, "functions": 0, "bytes": 0, "kept_for_direct_calls": 0} for r in rules}
    drop = []
    for idx, (start, end, rule) in enumerate(cand):
        account = per_rule[rules[rule].name]
        if idx in restored:
            account["kept_for_direct_calls"] += 1
            keep.append((start, end))
        else:
            account["functions"] += 1
            account["bytes"] += end - start
            drop.append((start, end))
    ranges = _subtract(_merge(drop), _merge(keep))

    # Addresses -> file offsets, through the section each range lies in.
    text = [s for s in sections if s.flags & SHF_EXECINSTR]
    file_ranges = []
    for a, b in ranges:
        sec = next((s for s in text if s.addr <= a and b <= s.addr + s.size), None)
        if sec is not None:
            file_ranges.append((sec.offset + a - sec.addr, sec.offset + b - sec.addr))
    return {
        "machine": machine, "ranges": file_ranges, "rules": per_rule,
        "bytes": sum(b - a for a, b in file_ranges), "backward_ops_kept": sorted(seen_ops),
    }


def prune(path: Path, out: Path | None = None) -> dict:
    """Blank the chosen ranges in place (or into ``out``); return the account."""
    data = bytearray(path.read_bytes())
    result = plan(data)
    fill = FILL[result["machine"]]
    for a, b in result["ranges"]:
        n = b - a
        data[a:b] = (fill * (n // len(fill) + 1))[:n]
    target = out or path
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(path.stat().st_mode)
    tmp.replace(target)
    result.pop("ranges")
    result["file"] = str(target)
    result["size"] = len(data)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("library", type=Path, help="unstripped libtorch_cpu.so")
    p.add_argument("-o", "--output", type=Path, help="write here instead of changing the file in place")
    p.add_argument("--report", type=Path, help="write the per-rule account as JSON")
    args = p.parse_args(argv)
    try:
        result = prune(args.library, args.output)
    except (ElfError, OSError) as exc:
        print(f"prune_libtorch: {args.library}: {exc}", file=sys.stderr)
        return 1
    for name, r in result["rules"].items():
        print(f"  {r['bytes'] / 2**20:7.2f} MiB  {r['functions']:6d} functions blanked, "
              f"{r['kept_for_direct_calls']:5d} kept (called directly)  {name}")
    print(f"blanked {result['bytes'] / 2**20:.2f} MiB of code in {result['file']}")
    if args.report:
        args.report.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
