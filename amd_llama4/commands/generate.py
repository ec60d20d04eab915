"""`amd-llama4 generate` and `amd-llama4 chat` (interactive, streaming)."""
from __future__ import annotations

import sys


def _engine_args(p) -> None:
    from amd_llama4.commands._engine_flags import add_engine_flags

    p.add_argument("--model", default="tiny-scout", help="preset name or checkpoint folder")
    add_engine_flags(p)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)


def _build(args):
    from amd_llama4 import LLM, SamplingParams
    from amd_llama4.commands._engine_flags import engine_kwargs

    llm = LLM(args.model, **engine_kwargs(args))
    sp = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                        max_tokens=args.max_tokens, seed=args.seed)
    return llm, sp


def run_generate(args) -> int:
    llm, sp = _build(args)
    for out in llm.generate(args.prompts, sp):
        o = out.outputs[0]
        print(o.text if llm.tokenizer is not None else o.token_ids)
        print(f"[{len(o.token_ids)} tokens, finish_reason={o.finish_reason}]", file=sys.stderr)
    return 0


def run_chat(args) -> int:
    """Streams each reply token by token through the same engine step loop the server uses."""
    from amd_llama4.engine.detokenizer import IncrementalDetokenizer

    llm, sp = _build(args)
    eng = llm.engine
    history = [{"role": "system", "content": args.system}] if args.system else []
    print("amd-llama4 chat: empty line or Ctrl-D to quit", file=sys.stderr)
    turn = 0
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line.strip():
            break
        history.append({"role": "user", "content": line})
        ids = eng.tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=True)
        rid = f"chat-{turn}"
        turn += 1
        eng.add_request(rid, ids, sp)
        shown = 0
        reply = ""
        while eng.has_unfinished():
            for out in eng.step():
                reply = out.outputs[0].text
                sys.stdout.write(reply[shown:])
                sys.stdout.flush()
                shown = len(reply)
        print()
        history.append({"role": "assistant", "content": reply})
    return 0


def register(sub) -> None:
    g = sub.add_parser("generate", help="generate text for one or more prompts")
    _engine_args(g)
    g.add_argument("prompts", nargs="+", help="prompt strings")
    g.set_defaults(func=run_generate)
    c = sub.add_parser("chat", help="interactive streaming chat")
    _engine_args(c)
    c.add_argument("--system", default=None, help="system message")
    c.set_defaults(func=run_chat)
