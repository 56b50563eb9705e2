"""The hostile requests of the reliability suite, shared by every entry's tests: issue 13's
table and more. Each row: (fields, a fragment the refusal's message must contain)."""

from __future__ import annotations

import math

# ~100 tokens: fits the pool alone, not with 900 new tokens (pool 600 < context 1024).
PROMPT_100 = "the cat sat on the mat and looked at the dog " * 6

# (sampling fields, what the 400's message must contain). Field names are SGLang's; routes
# translate max_new_tokens to their own name.
SAMPLING_PROBES = [
    ({"seed": 2**64}, "seed must be in"),
    ({"seed": 18446744073709551616}, "seed must be in"),
    ({"top_k": 2**64}, "top_k does not fit a 64-bit integer"),
    ({"temperature": math.inf}, "temperature must be a finite number"),
    ({"temperature": math.nan}, "temperature must be a finite number"),
    ({"top_p": math.nan}, "top_p must be a finite number"),
    ({"stop": "a\ud800"}, "stop is not valid Unicode"),
    ({"stop": ["x" * 2000]}, "at most 1024 characters"),
    ({"regex": "[a-z]\udc00"}, "regex is not valid Unicode"),
    ({"n": 100000}, "n must be at most"),
    ({"max_new_tokens": 900, "ignore_eos": True}, "can never fit in the KV cache"),
    ({"max_new_tokens": 2**70}, "max_new_tokens does not fit a 64-bit integer"),
    ({"ignore_eos": "yes"}, "ignore_eos must be a boolean"),
]
LOGIT_BIAS_PROBES = [({"logit_bias": {"5": math.nan}}, "logit_bias values must be finite")]


REQUEST_PROBES = [
    # The critical row: the <= 20 bound held only in one HTTP handler.
    ({"text": "hi", "return_logprob": True, "top_logprobs_num": 5000}, "top_logprobs_num must be"),
    ({"text": "hi", "return_logprob": True, "top_logprobs_num": 10**6}, "top_logprobs_num must be"),
    ({"text": "hi", "return_logprob": "yes"}, "return_logprob"),
    ({"text": "hi", "stream": "yes"}, "stream"),
    ({"text": "hi", "return_logprob": True, "logprob_start_len": -5}, "logprob_start_len"),
    ({"text": "hi", "return_logprob": True, "logprob_start_len": 1.5}, "logprob_start_len"),
    ({"input_ids": [True]}, "input_ids"),
    ({"input_ids": [1, 2**64]}, "out of vocabulary"),
    ({"input_ids": [[1, 2], ["a"]]}, "input_ids"),
    ({"text": "a\ud800b"}, "text is not valid Unicode"),
    ({"text": ["fine", "also fine", "a\udfffb"]}, "text is not valid Unicode"),
    ({"text": "hi", "input_ids": [1]}, "not both"),
    ({"text": ["x"] * 1000, "sampling_params": {"n": 8, "max_new_tokens": 1}}, "fans out to more than"),
    ({"text": ["a", "b"], "rid": ["same", "same"]}, "unique"),
    ({"text": "hi", "rid": ""}, "rid"),
    ({"text": "hi", "sampling_params": [{}]}, "list of 1"),
    ({"text": "hi", "image_data": "x"}, "Image input"),
    ({"text": "x " * 5000}, "longer than the model's context length"),
]
