"""Every Triton kernel of the package with representative argument types, for ahead-of-time
compilation without a GPU (amd_llama4.tools.isa, tests/tools/test_isa.py).

Each variant lists every argument: a type string ("*bf16", "i32", "fp32"; ":16" marks a value the
runtime would see as divisible by 16) or a constant (constexprs, and strides of 1, which the JIT
specialises the same way at launch). Configs come from configs.py defaults and the tuned JSON files.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from amd_llama4.ops.triton import configs
from amd_llama4.platform import FP8_FORMATS, fp8_format_for_arch

HEAD_D = 128  # Llama 4 head dim


@dataclass
class Variant:
    kernel: str  # display name
    fn: object  # the @triton.jit function
    args: dict  # every argument: type string or constant (tile constexprs added from the config)
    op: str | None = None  # config family in configs.py (None: fixed launch, no tile config)
    tiles: tuple = ()  # which TileConfig fields become constexprs
    shape_filter: dict = field(default_factory=dict)  # tuned files that apply to this variant
    dot: bool = False  # uses tl.dot (expects v_mfma / wgmma)


def fp8_type(arch: str) -> str:
    return FP8_FORMATS[fp8_format_for_arch(arch)].triton


def variants(arch: str) -> list[Variant]:
    """Representative variants for `arch` (needs a process where triton compiles, see kernels/__init__)."""
    from amd_llama4.ops.triton.kernels import align, attention, gemm, moe, paged, paged_prefill, quant, routing

    moe_gemm_kernel, quant_fp8_rows_kernel = moe.moe_gemm_kernel, quant.quant_fp8_rows_kernel
    top1_sigmoid_kernel, fp8_gemm_kernel = routing.top1_sigmoid_kernel, gemm.fp8_gemm_kernel
    attn_prefill_kernel, paged_decode_kernel = attention.attn_prefill_kernel, paged.paged_decode_kernel
    paged_reduce_kernel = paged.paged_reduce_kernel
    fmt = FP8_FORMATS[fp8_format_for_arch(arch)]
    f8 = fmt.triton
    out = []
    for fp8 in (False, True):
        a_t = f"*{f8}:16" if fp8 else "*bf16:16"
        for gated in (True, False):
            name = f"moe_gemm[{'gate_up' if gated else 'down'},{'fp8' if fp8 else 'bf16'}]"
            out.append(Variant(name, moe_gemm_kernel, dict(
                a_ptr=a_t, b_ptr=a_t, c_ptr="*bf16:16", a_scale_ptr="*fp32:16", b_scale_ptr="*fp32:16",
                topk_w_ptr="*fp32:16", sorted_ids_ptr="*i32:16", expert_ids_ptr="*i32:16", num_rows="i32",
                N="i32:16", K="i32:16", a_row_div=1 if not gated else "i32", max_padded="i32:16", total_ptr="*i32:16",
                stride_am="i32:16", stride_ak=1, stride_be="i32:16", stride_bk="i32:16", stride_bn=1,
                stride_cm="i32:16", stride_cn=1, stride_bse="i32:16", stride_bsn=1,
                GATED=gated, MUL_WEIGHT=gated, USE_FP8=fp8, DOT_F32=False),
                op="fused_moe", tiles=("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"),
                shape_filter={"dtype": "fp8_w8a8"} if fp8 else {"dtype!": "fp8_w8a8"}, dot=True))
    out.append(Variant("quant_fp8_rows", quant_fp8_rows_kernel, dict(
        x_ptr="*bf16:16", q_ptr=f"*{f8}:16", s_ptr="*fp32:16", N="i32:16", stride_xm="i32:16", stride_qm="i32:16",
        FMAX=fmt.max, EMIN=fmt.emin_biased, BLOCK=1024)))
    out.append(Variant("moe_align[E128]", align.moe_align_kernel, dict(
        ids_ptr="*i32:16", sorted_ptr="*i32:16", expert_ids_ptr="*i32:16", total_ptr="*i32:16", n="i32", E="i32",
        BLOCK=64, BLOCK_N=64, BLOCK_E=128)))
    out.append(Variant("top1_sigmoid", top1_sigmoid_kernel, dict(
        logits_ptr="*bf16:16", w_ptr="*fp32:16", ids_ptr="*i32:16", T="i32", E="i32:16", stride_t="i32:16",
        BLOCK_T=16, BLOCK_E=128)))
    for block in (False, True):
        out.append(Variant(f"fp8_gemm[{'block128' if block else 'channel'}]", fp8_gemm_kernel, dict(
            a_ptr=f"*{f8}:16", b_ptr=f"*{f8}:16", c_ptr="*bf16:16", as_ptr="*fp32:16", bs_ptr="*fp32:16",
            M="i32", N="i32:16", K="i32:16", stride_am="i32:16", stride_ak=1, stride_bn="i32:16", stride_bk=1,
            stride_cm="i32:16", stride_cn=1, stride_asm="i32", stride_ask=1 if block else "i32",
            stride_bsn="i32", stride_bsk=1 if block else "i32",
            BLOCK_SCALE=block, SCALE_BN=128 if block else 1, SCALE_BK=128 if block else 1, DOT_F32=False),
            op="fp8_gemm", tiles=("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"),
            shape_filter={"dtype": "fp8_block" if block else "fp8_channel"}, dot=True))
    for chunked, temp in ((True, False), (False, True)):
        out.append(Variant(f"attn_prefill[{'chunked' if chunked else 'global,temp'}]", attn_prefill_kernel, dict(
            q_ptr="*bf16:16", k_ptr="*bf16:16", v_ptr="*bf16:16", o_ptr="*bf16:16", qpos_ptr="*i32:16",
            kpos_ptr="*i32:16", sm_scale="fp32", S="i32", L="i32", Hq="i32", GQA="i32", chunk_size="i32:16",
            floor_scale="fp32", attn_scale="fp32",
            **{s: "i32:16" for s in ("stride_qb", "stride_qs", "stride_qh", "stride_kb", "stride_kl", "stride_kh")},
            CHUNKED=chunked, HAS_TEMP=temp, DOT_F32=False, HEAD_D=HEAD_D),
            op="attention", tiles=("BLOCK_M", "BLOCK_N"), dot=True))
    for kv in ("bf16", f8):
        out.append(Variant(f"paged_decode[{'fp8' if kv == f8 else 'bf16'}_kv]", paged_decode_kernel, dict(
            q_ptr="*bf16:16", kc_ptr=f"*{kv}:16", vc_ptr=f"*{kv}:16", bt_ptr="*i32:16", seqlen_ptr="*i32:16",
            firstpos_ptr="*i32:16", qpos_ptr="*i32:16", ks_ptr="*fp32:16", vs_ptr="*fp32:16", po_ptr="*fp32:16",
            pm_ptr="*fp32:16", pl_ptr="*fp32:16", sm_scale="fp32", chunk_size="i32:16", GQA="i32", page_size="i32:16",
            num_splits="i32", stride_qb="i32:16", stride_qh="i32:16", stride_kcb="i32:16", stride_kcs="i32:16",
            stride_kch="i32:16", stride_vcb="i32:16", stride_vcs="i32:16", stride_vch="i32:16", stride_btb="i32",
            **_scale_strides(kv == f8), stride_pob="i32:16", stride_poh="i32:16", stride_pos="i32:16",
            stride_pmb="i32", stride_pmh="i32",
            CHUNKED=True, KV_FP8=kv == f8, DOT_F32=False, HEAD_D=HEAD_D, QH=16),
            op="paged_decode", tiles=("BLOCK_N",), dot=True))
    for kv, chunked in (("bf16", True), ("bf16", False), (f8, True)):
        name = f"paged_prefill[{'fp8' if kv == f8 else 'bf16'}_kv{',chunked' if chunked else ''}]"
        out.append(Variant(name, paged_prefill.paged_prefill_kernel, dict(
            q_ptr="*bf16:16", kc_ptr=f"*{kv}:16", vc_ptr=f"*{kv}:16", o_ptr="*bf16:16", bt_ptr="*i32:16",
            cu_ptr="*i32:16", seqlen_ptr="*i32:16", firstpos_ptr="*i32:16", qpos_ptr="*i32:16", ks_ptr="*fp32:16",
            vs_ptr="*fp32:16", sm_scale="fp32", num_seqs="i32", Hq="i32", GQA="i32", page_size="i32:16",
            chunk_size="i32:16", stride_qt="i32:16", stride_qh="i32:16", stride_kcb="i32:16", stride_kcs="i32:16",
            stride_kch="i32:16", stride_btb="i32", **_scale_strides(kv == f8),
            CHUNKED=chunked, KV_FP8=kv == f8, DOT_F32=False, HEAD_D=HEAD_D),
            op="paged_prefill", tiles=("BLOCK_M", "BLOCK_N"), dot=True))
    out.append(Variant("paged_reduce", paged_reduce_kernel, dict(
        po_ptr="*fp32:16", pm_ptr="*fp32:16", pl_ptr="*fp32:16", o_ptr="*bf16:16", num_splits="i32",
        stride_pob="i32:16", stride_poh="i32:16", stride_pos="i32:16", stride_pmb="i32", stride_pmh="i32",
        stride_ob="i32:16", stride_oh="i32:16", SPLITS=16, HEAD_D=HEAD_D)))
    out += _int4_variants()
    return out


def _int4_variants() -> list[Variant]:
    """w4a16 GEMM and MoE (ops/triton/int4.py) at the launcher's fixed tiles: decode (16 rows) and
    prefill (64), group 128 and 32 (BLOCK_K 32), symmetric and with zero points."""
    from amd_llama4.ops.triton import int4 as launcher
    from amd_llama4.ops.triton.kernels import int4_gemm, int4_moe

    out = []
    for rows, g, zp in ((1, 128, False), (128, 128, True), (1, 32, True)):
        t = launcher.tiles_for(rows, g)
        out.append(Variant(f"int4_gemm[m{t.BLOCK_M},g{g}{',zp' if zp else ''}]", int4_gemm.int4_gemm_kernel, dict(
            a_ptr="*bf16:16", q_ptr="*u8:16", s_ptr="*bf16:16", z_ptr="*u8:16", c_ptr="*bf16:16", M="i32",
            N="i32:16", K="i32:16", group_size="i32:16", stride_am="i32:16", stride_ak=1, stride_qn="i32:16",
            stride_qk=1, stride_sn="i32", stride_sg=1, stride_cm="i32:16", stride_cn=1,
            HAS_ZERO=zp, DOT_F32=False, **t.meta()), dot=True))
    for rows, gated, zp in ((1, True, False), (1, False, False), (128, True, True)):
        t = launcher.tiles_for(rows, 128)
        name = f"int4_moe[{'gate_up' if gated else 'down'},m{t.BLOCK_M}{',zp' if zp else ''}]"
        out.append(Variant(name, int4_moe.int4_moe_kernel, dict(
            a_ptr="*bf16:16", q_ptr="*u8:16", s_ptr="*bf16:16", z_ptr="*u8:16",
            c_ptr="*bf16:16" if gated else "*fp32:16",
            topk_w_ptr="*fp32:16", sorted_ids_ptr="*i32:16", expert_ids_ptr="*i32:16", num_rows="i32", N="i32:16",
            K="i32:16", group_size="i32:16", a_row_div="i32" if gated else 1, max_padded="i32:16",
            total_ptr="*i32:16", stride_am="i32:16", stride_ak=1, stride_qe="i32:16", stride_qn="i32:16",
            stride_qk=1, stride_se="i32", stride_sn="i32", stride_sg=1, stride_cm="i32:16", stride_cn=1,
            GATED=gated, MUL_WEIGHT=gated, HAS_ZERO=zp, DOT_F32=False, **t.meta()), dot=True))
    return out


def _scale_strides(fp8: bool) -> dict:
    # per-token fp8 scales [num_blocks, block_size, Hkv] (the engine's view: head stride 1); unread without fp8
    if fp8:
        return dict(stride_ksb="i32", stride_kss="i32", stride_ksh=1, stride_vsb="i32", stride_vss="i32", stride_vsh=1)
    return dict(stride_ksb=0, stride_kss=0, stride_ksh=0, stride_vsb=0, stride_vss=0, stride_vsh=0)


def _matches(shape: dict, flt: dict) -> bool:
    for k, v in flt.items():
        if k.endswith("!"):
            if shape.get(k[:-1]) == v:
                return False
        elif shape.get(k) != v:
            return False
    return True


def configs_for(v: Variant, arch: str) -> list[tuple[str, configs.TileConfig | None, str]]:
    """[(label, config, source)]: the arch default first, then each distinct tuned config for devices
    of this arch's family (the tuned files say which device; gfx942 and gfx950 both read AMD files
    whose device has that arch)."""
    if v.op is None:
        return [("fixed", None, "fixed")]
    default = configs.default_config(v.op, arch)
    out = [(default.label(), default, "default")]
    seen = {default}
    from amd_llama4.platform import DEVICE_SPECS
    archs = {s.name: s.arch for s in DEVICE_SPECS.values()}
    for table in configs.all_tuned(configs.family(arch)):
        if table["op"] != v.op or archs.get(table["device"]) != arch or not _matches(table["shape"], v.shape_filter):
            continue
        for cfg in table["_parsed"].values():
            if cfg not in seen:
                seen.add(cfg)
                out.append((cfg.label(), cfg, f"tuned:{table['device']}:{table.get('source', '?')}"))
    return out


def compile_args(v: Variant, cfg: configs.TileConfig | None) -> tuple[dict, dict, dict]:
    """-> (signature, constexprs, attrs) for triton.compiler.ASTSource."""
    args = dict(v.args)
    if cfg is not None:
        for t in v.tiles:
            args[t] = getattr(cfg, t)
    names = v.fn.arg_names
    missing = set(names) - set(args)
    if missing:
        raise ValueError(f"catalog {v.kernel}: arguments without a type or value: {sorted(missing)}")
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(names):
        a = args[name]
        if isinstance(a, str):
            t, _, hint = a.partition(":")
            signature[name] = t
            if hint == "16":
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "constexpr"
            constexprs[name] = a
    return signature, constexprs, attrs
