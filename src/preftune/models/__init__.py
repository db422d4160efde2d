"""Model loading (policy, reference, reward, critic), LoRA, log-prob helpers, the tiny model."""
from .load import LoraSpec, load_causal_lm, load_reward_model, load_tokenizer, save_model
from .logprobs import CausalLMScorer, RewardScorer, TokenScores, lm_inputs, per_sequence, rm_inputs, token_logps

__all__ = ["CausalLMScorer", "LoraSpec", "RewardScorer", "TokenScores", "lm_inputs", "load_causal_lm", "per_sequence",
           "rm_inputs", "load_reward_model", "load_tokenizer", "save_model", "token_logps"]
