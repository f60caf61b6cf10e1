"""TEST DOUBLE of ``tensorrt_llm/llmapi/tokenizer.py``: ``TokenizerBase``, ``TransformersTokenizer``,
``tokenizer_factory`` and ``load_hf_tokenizer`` (same loading kwargs as the real ones).

``TransformersTokenizer`` wraps a Hugging Face tokenizer loaded with ``transformers.AutoTokenizer``;
the incremental-detokenization helpers are not mirrored (the double decodes whole sequences).
"""

from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from ..logger import logger


class TokenizerBase(PreTrainedTokenizerBase):
    ''' This is a protocol for the tokenizer. Users can implement their own tokenizer by inheriting this class.  '''


class TransformersTokenizer(TokenizerBase):
    ''' A wrapper for the Transformers' tokenizer.
    This is the default tokenizer for LLM. '''

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._all_special_tokens_set = set(self.tokenizer.all_special_tokens)

    def __call__(self, text: str, *args, **kwargs) -> Any:
        return self.tokenizer(text, *args, **kwargs)

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def name_or_path(self) -> str:
        return self.tokenizer.name_or_path

    def encode(self, text: str, *args, **kwargs) -> List[int]:
        return self.tokenizer.encode(text, *args, **kwargs)

    def decode(self, token_ids: List[int], *args, **kwargs) -> str:
        return self.tokenizer.decode(token_ids, *args, **kwargs)

    def batch_encode_plus(self, texts: List[str], *args, **kwargs) -> dict:
        return self.tokenizer.batch_encode_plus(texts, *args, **kwargs)

    def get_chat_template(self, chat_template: Optional[str] = None, tools: Optional[List[Dict]] = None) -> str:
        return self.tokenizer.get_chat_template(chat_template, tools)

    def apply_chat_template(self, conversation: Union[List[Dict[str, str]], List[List[Dict[str, str]]]], *args,
                            **kwargs) -> Union[str, List[int], List[str], List[List[int]]]:
        return self.tokenizer.apply_chat_template(conversation, *args, **kwargs)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.tokenizer})"

    @classmethod
    def from_pretrained(cls, pretrained_model_dir: str, **kwargs):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_dir, **kwargs)
        return cls(tokenizer)

    def save_pretrained(self, pretrained_model_dir: str, **kwargs):
        self.tokenizer.save_pretrained(pretrained_model_dir, **kwargs)

    @property
    def is_fast(self) -> bool:
        return self.tokenizer.is_fast

    def get_added_vocab(self) -> Dict[str, int]:
        return self.tokenizer.get_added_vocab()

    def convert_ids_to_tokens(self, ids: Union[int, List[int]], skip_special_tokens: bool = False
                              ) -> Union[str, List[str]]:
        return self.tokenizer.convert_ids_to_tokens(ids, skip_special_tokens=skip_special_tokens)


def tokenizer_factory(obj: Optional[Union[str, Path, PreTrainedTokenizerBase, TokenizerBase]] = None,
                      **kwargs) -> Optional[TokenizerBase]:
    if obj is None:
        return None
    elif isinstance(obj, (str, Path)):
        default_kwargs = {
            'legacy': False,
            'padding_side': 'left',
            'truncation_side': 'left',
            'trust_remote_code': True,
            'use_fast': True,
        }
        default_kwargs.update(kwargs)
        return TransformersTokenizer.from_pretrained(obj, **default_kwargs)
    elif isinstance(obj, TokenizerBase):
        return obj
    elif isinstance(obj, PreTrainedTokenizerBase):
        return TransformersTokenizer(obj)
    else:
        raise TypeError(f"Unrecognized tokenizer {obj}")


def load_hf_tokenizer(model_dir: str, trust_remote_code: bool = True, use_fast: bool = True,
                      **kwargs) -> Optional[TransformersTokenizer]:
    ''' Load a tokenizer from a Hugging Face model directory (None, with a warning, if that fails). '''
    try:
        return TransformersTokenizer.from_pretrained(
            model_dir,
            legacy=False,
            padding_side='left',
            truncation_side='left',
            trust_remote_code=trust_remote_code,
            use_fast=use_fast,
            **kwargs)

    except Exception as e:
        logger.warning(f"Failed to load hf tokenizer from {model_dir}, encounter error: {e}")
        return None
