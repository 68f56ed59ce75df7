from smolray.model.llama import build_model, count_parameters, hf_config

__all__ = ["build_model", "count_parameters", "hf_config"]
