"""scalegpt export --checkpoint CKPT --out DIR [--overwrite]: a checkpoint as a HuggingFace GPT-2, Llama or Qwen3
directory, whichever family the model's config belongs to."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint as a HuggingFace GPT-2, Llama or Qwen3 directory",
                       description="Write a directory that transformers.AutoModelForCausalLM.from_pretrained loads "
                                   "(with the tokenizer files when the tokenizer is gpt2): GPT2LMHeadModel for "
                                   "GPT-2 configs, LlamaForCausalLM for rope + rmsnorm + swiglu ones, "
                                   "Qwen3ForCausalLM when qk_norm is on too. Options no HF family has are refused.")
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint directory, or a run directory (its latest checkpoints/step_*)")
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output directory")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    from scalegpt.checkpoint import load_model_dir, resolve_checkpoint
    from scalegpt.hf import ARCHITECTURES, export_family, export_hf, hf_tokenizer_note

    ckpt = resolve_checkpoint(args.checkpoint)
    model, spec = load_model_dir(ckpt)
    out = export_hf(model, spec, args.out, overwrite=args.overwrite)
    kind = spec.get("kind") if spec else "none"
    extra = " + tokenizer files" if kind in ("gpt2", "char") else ""
    architecture = ARCHITECTURES[export_family(model.config)]
    print(f"exported {ckpt} ({model.num_params():,} parameters, tokenizer {kind}) to {out} as {architecture}{extra}")
    print(f"  tokenizer: {hf_tokenizer_note(spec)}")
    return 0
