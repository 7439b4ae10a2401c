"""An ms-swift plugin for the tests' tiny Qwen2-VL (``--external_plugins THIS --template tiny_qwen2_vl``).

ms-swift's ``Qwen2VLTemplate`` expands an image into its visual tokens by looking for the real
Qwen2-VL token ids (``image_token_id = 151655``, a class attribute), while the tiny checkpoint's
420-token vocabulary puts ``<|image_pad|>`` at id 5: with ``--template qwen2_vl`` every image stays
one token and ms-swift scatters only the first of its visual features into it (no error). This
template is ``Qwen2VLTemplate`` with both ids read from the checkpoint's tokenizer.
"""

from swift.template import register_template
from swift.template.templates.qwen import Qwen2VLTemplate, QwenTemplateMeta

NAME = "tiny_qwen2_vl"


class TinyQwen2VLTemplate(Qwen2VLTemplate):
    def init_processor(self, processor) -> None:
        super().init_processor(processor)
        if processor is not None:
            self.image_token_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
            self.video_token_id = self.tokenizer.convert_tokens_to_ids("<|video_pad|>")


register_template(QwenTemplateMeta(NAME, template_cls=TinyQwen2VLTemplate), exist_ok=True)
