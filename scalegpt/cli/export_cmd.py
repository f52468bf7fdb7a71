"""scalegpt export --checkpoint CKPT --out DIR [--overwrite]: a checkpoint as a HuggingFace GPT-2, Llama or Qwen3
directory, whichever family the model's config belongs to; with --format gguf, one .gguf file for llama.cpp."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint as a HuggingFace GPT-2, Llama or Qwen3 directory, "
                                      "or as a GGUF file for llama.cpp",
                       description="Write a directory that transformers.AutoModelForCausalLM.from_pretrained loads "
                                   "(with the tokenizer files when the tokenizer is gpt2): GPT2LMHeadModel for "
                                   "GPT-2 configs, LlamaForCausalLM for rope + rmsnorm + swiglu ones, "
                                   "Qwen3ForCausalLM when qk_norm is on too. Options no HF family has are refused. "
                                   "--format gguf writes one .gguf file (architecture gpt2, llama or qwen3, "
                                   "tokenizer embedded) that llama.cpp runs; see docs/gguf.md.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint",
                        help="a checkpoint directory, or a run directory (its latest checkpoints/step_*)")
    source.add_argument("--hf", help="a HuggingFace GPT-2, Llama or Qwen3 directory (or an exported one) instead of "
                                     "a checkpoint")
    p.add_argument("--out", required=True, help="output directory (hf) or .gguf file (gguf); must not exist (a "
                                                "directory: or be empty) unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing export written by scalegpt (a directory or file it did not write is never "
                        "replaced)")
    p.add_argument("--format", choices=("hf", "gguf"), default="hf",
                   help="hf: a HuggingFace directory (default); gguf: one file for llama.cpp")
    p.add_argument("--dtype", choices=("f32", "f16", "bf16", "q8_0"), default=None,
                   help="GGUF weight type (default f32; norms and biases stay f32); --format gguf only")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    from scalegpt.checkpoint import load_model_dir, resolve_checkpoint
    from scalegpt.hf import ARCHITECTURES, export_family, export_hf, hf_tokenizer_note, load_pretrained_with_tokenizer

    ckpt = resolve_checkpoint(args.checkpoint) if args.hf is None else args.hf
    model, spec = load_model_dir(ckpt) if args.hf is None else load_pretrained_with_tokenizer(args.hf)
    if args.format == "gguf":
        return _export_gguf(args, model, spec, ckpt)
    if args.dtype is not None:
        from scalegpt.errors import ScalegptError

        raise ScalegptError("--dtype applies to --format gguf only (an hf export keeps the checkpoint's float32)")
    inputs = [ckpt] if args.hf else [args.checkpoint, ckpt]
    out = export_hf(model, spec, args.out, overwrite=args.overwrite, inputs=inputs)
    kind = spec.get("kind") if spec else "none"
    extra = " + tokenizer files" if kind in ("gpt2", "char") else ""
    architecture = ARCHITECTURES[export_family(model.config)]
    print(f"exported {ckpt} ({model.num_params():,} parameters, tokenizer {kind}) to {out} as {architecture}{extra}")
    print(f"  tokenizer: {hf_tokenizer_note(spec)}")
    return 0


def _export_gguf(args, model, spec, source) -> int:
    from pathlib import Path

    from scalegpt.gguf_export import export_gguf
    from scalegpt.hf import export_family

    dtype = args.dtype or "f32"
    inputs = [source] if args.hf else [args.checkpoint, source]
    out = export_gguf(model, spec, args.out, dtype=dtype, overwrite=args.overwrite, name=Path(source).name,
                      inputs=inputs)
    kind = spec.get("kind") if spec else "none"
    print(f"exported {source} ({model.num_params():,} parameters, tokenizer {kind}) to {out} as GGUF "
          f"{export_family(model.config)} {dtype}")
    return 0
