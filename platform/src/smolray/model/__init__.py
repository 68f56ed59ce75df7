from smolray.model.llama import build_model, count_parameters, hf_config, set_rope_theta

__all__ = ["build_model", "count_parameters", "hf_config", "set_rope_theta"]
