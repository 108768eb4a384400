"""Generation engines behind one small protocol (no Ray here).

``generate(prompts, n, ...)`` samples ``n`` completions per prompt and returns, per
sample, the response ids, per-token behavior log-probs and entropies, the finish
reason and the decoded text. ``load_weights(packed)`` copies packed weights in.

* ``hf``: transformers ``generate`` (CPU default): batched with left padding; the
  log-probs and the full-vocabulary entropy come from the raw logits divided by the
  temperature, exactly as the learner computes them (top_p only shapes sampling).
* ``vllm``: ``vllm.LLM`` (GPU; optional extra): ``SamplingParams(n=G, logprobs=k)`` with
  ``logprobs_mode="processed_logprobs"`` (after temperature, like the learner's; with
  top_p < 1 also after the nucleus cut); entropy is estimated from the top-k log-probs; weights load in place through a
  ``worker_extension_cls`` method that calls the model's ``load_weights``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Dict, List, Protocol, Sequence

import torch

from crpo_ray.algo import token_logprobs_and_entropy
from crpo_ray.weights import PackedWeights, load_into, unpack_views

VLLM_MISSING = ("rollout.engine=vllm needs vLLM, which is not installed: pip install 'crpo-ray[vllm]' "
                "on a machine with a GPU, or use rollout.engine=hf")


@dataclass
class Samples:
    """Column-wise results of one generate call, ``len(prompts) * n`` rows, grouped by prompt."""

    response_ids: List[List[int]]
    logprobs: List[List[float]]
    entropies: List[List[float]]
    finish_reasons: List[str]
    completions: List[str]


class Engine(Protocol):
    def generate(self, prompts: Sequence[Sequence[int]], n: int, *, temperature: float, top_p: float,
                 max_new_tokens: int, greedy: bool = False, seed: int = 0) -> Samples: ...

    def load_weights(self, packed: PackedWeights) -> int: ...


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFEngine:
    """transformers generate on the local device (CPU unless CUDA is visible)."""

    def __init__(self, model_dir: str, dtype: str = "float32", trust_remote_code: bool = False,
                 attn_implementation: str = "sdpa"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation)
        self.model.eval()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]

    def _eos_ids(self) -> List[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return [eos] if isinstance(eos, int) else list(eos)

    @torch.no_grad()
    def generate(self, prompts, n, *, temperature, top_p, max_new_tokens, greedy=False, seed=0) -> Samples:
        rows = [list(p) for p in prompts for _ in range(n)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
            attn[i, width - len(r):] = 1
        torch.manual_seed(seed)
        out = self.model.generate(
            input_ids=ids.to(self.device), attention_mask=attn.to(self.device), do_sample=not greedy,
            temperature=temperature if not greedy else None, top_p=top_p if not greedy else None, top_k=None,
            max_new_tokens=max_new_tokens, eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
            output_logits=True, return_dict_in_generate=True)
        gen = out.sequences[:, width:].cpu()
        logits = torch.stack(out.logits, dim=1).float().cpu()  # [N, T, V], raw
        lp, ent = token_logprobs_and_entropy(logits, gen, temperature=1.0 if greedy else temperature)
        return self._columns(gen, lp, ent)

    def _columns(self, gen, lp, ent) -> Samples:
        res = Samples([], [], [], [], [])
        eos = set(self.eos_ids)
        for i in range(gen.shape[0]):
            seq = gen[i].tolist()
            stop = next((t for t, tok in enumerate(seq) if tok in eos), None)
            length = len(seq) if stop is None else stop + 1
            seq = seq[:length]
            res.response_ids.append(seq)
            res.logprobs.append(lp[i, :length].tolist())
            res.entropies.append(ent[i, :length].tolist())
            res.finish_reasons.append("length" if stop is None else "stop")
            res.completions.append(self.tokenizer.decode(seq, skip_special_tokens=True))
        return res

    def load_weights(self, packed: PackedWeights) -> int:
        return load_into(self.model, packed)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}


class VLLMWeightLoader:
    """vLLM ``worker_extension_cls``: adds a weight-loading method to every vLLM worker."""

    def crpo_load_packed(self, packed: PackedWeights) -> int:
        views = unpack_views(packed)
        device = self.device  # noqa: attribute of the vLLM worker this class extends
        self.model_runner.model.load_weights(weights=[(k, v.to(device)) for k, v in views.items()])
        return packed.nbytes


class VLLMEngine:
    """vllm.LLM on a GPU; entropy estimated from the top-k log-probs of each step."""

    def __init__(self, model_dir: str, dtype: str = "bfloat16", trust_remote_code: bool = False,
                 gpu_memory_utilization: float = 0.5, logprobs_topk: int = 20, max_model_len: int = 2048):
        if importlib.util.find_spec("vllm") is None:
            raise RuntimeError(VLLM_MISSING)
        from vllm import LLM

        self.topk = logprobs_topk
        self.llm = LLM(model=model_dir, dtype=dtype, trust_remote_code=trust_remote_code,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       # log-probs after temperature, as the learner computes them (vLLM's default
                       # is the raw logits' log-probs, which would make every ratio wrong)
                       logprobs_mode="processed_logprobs",
                       worker_extension_cls="crpo_ray.engines.VLLMWeightLoader")
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts, n, *, temperature, top_p, max_new_tokens, greedy=False, seed=0) -> Samples:
        import math

        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(n=n, temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p,
                                max_tokens=max_new_tokens, logprobs=self.topk, seed=seed)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        res = Samples([], [], [], [], [])
        for req in outs:
            for o in req.outputs:
                ids = list(o.token_ids)
                lps, ents = [], []
                for tok, top in zip(ids, o.logprobs or []):
                    lps.append(top[tok].logprob)
                    probs = [math.exp(x.logprob) for x in top.values()]
                    ents.append(-sum(p * math.log(p) for p in probs if p > 0))
                res.response_ids.append(ids)
                res.logprobs.append(lps)
                res.entropies.append(ents)
                res.finish_reasons.append("stop" if o.finish_reason == "stop" else "length")
                res.completions.append(o.text)
        return res

    def load_weights(self, packed: PackedWeights) -> int:
        return sum(self.llm.collective_rpc("crpo_load_packed", args=(packed,)))


def make_engine(engine: str, model_dir: str, *, dtype: str, trust_remote_code: bool, attn_implementation: str,
                vllm_gpu_memory_utilization: float = 0.5, vllm_logprobs_topk: int = 20) -> Engine:
    if engine == "hf":
        return HFEngine(model_dir, dtype, trust_remote_code, attn_implementation)
    if engine == "vllm":
        return VLLMEngine(model_dir, dtype, trust_remote_code, vllm_gpu_memory_utilization, vllm_logprobs_topk)
    raise ValueError(f"unknown engine '{engine}' (known: hf, vllm)")
