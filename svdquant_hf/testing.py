"""Offline builders of tiny random diffusers models and pipelines (no network), for tests and examples.

Linear layers of the denoisers have in/out features that are multiples of 64, so they are all
quantizable with the default INT4 group size and rank 32. Everything is seeded and deterministic.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

_WORDS = (
    "a photo of an astronaut riding horse on the moon cat dog sitting under red blue green tree "
    "painting city at night with lights river mountain sunset portrait woman man robot castle"
).split()


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins GPT-2 style byte-level BPE uses for raw bytes."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), 256)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(shifted)) for b in range(256)]


def _cast(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    return (model.to(dtype) if dtype != torch.float32 else model).eval()


def clip_tokenizer():
    """A byte-level CLIPTokenizer with an in-memory vocab (every byte symbol, no merges)."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer():
    """A unigram T5 tokenizer with a small in-memory vocab (characters plus a few words)."""
    from transformers import T5TokenizerFast

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"
    pieces += [(c, -5.0) for c in chars]
    pieces += [("\u2581" + c, -4.5) for c in chars]
    pieces += [("\u2581" + w, -3.0) for w in sorted(set(_WORDS))]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


def tiny_clip_text_model(seed: int = 0, vocab_size: int = 600):
    from transformers import CLIPTextConfig, CLIPTextModel

    _seeded(seed)
    cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=64,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(cfg).eval()


def tiny_t5_encoder(seed: int = 0, vocab_size: int = 160):
    from transformers import T5Config, T5EncoderModel

    _seeded(seed)
    cfg = T5Config(
        vocab_size=vocab_size, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    return T5EncoderModel(cfg).eval()


def _tiny_llm_text_config(vocab_size: int) -> dict:
    """The decoder text config shared by the LLM text encoders below: 64 wide, 4 query / 2 key-value heads of
    16, MLP 192, 2 layers."""
    return dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, tie_word_embeddings=False,
    )


def _tiny_decoder(arch: str, seed: int, vocab_size: int):
    """transformers' ``{arch}Model`` with the shared tiny decoder config."""
    import transformers

    _seeded(seed)
    config = getattr(transformers, f"{arch}Config")(**_tiny_llm_text_config(vocab_size))
    return getattr(transformers, f"{arch}Model")(config).eval()


def tiny_qwen3_text_encoder(seed: int = 0, vocab_size: int = 256):
    """Qwen3Model, what Z-Image's pipeline runs as its text encoder (it reads ``hidden_states[-2]``)."""
    return _tiny_decoder("Qwen3", seed, vocab_size)


def tiny_llama_text_encoder(seed: int = 0, vocab_size: int = 256):
    """LlamaModel, the text encoder of HunyuanVideo (a LLaVA-Llama-3) and HiDream-I1 (Llama-3.1)."""
    return _tiny_decoder("Llama", seed, vocab_size)


def tiny_gemma2_text_encoder(seed: int = 0, vocab_size: int = 256):
    """Gemma2Model, Lumina 2's text encoder (Gemma-2-2B)."""
    return _tiny_decoder("Gemma2", seed, vocab_size)


def tiny_glm_text_encoder(seed: int = 0, vocab_size: int = 256):
    """GlmModel, CogView4's text encoder (GLM-4-9B; its MLP's gate and up projections are one linear)."""
    return _tiny_decoder("Glm", seed, vocab_size)


def tiny_qwen2_5_vl_text_encoder(seed: int = 0, vocab_size: int = 256):
    """Qwen2_5_VLForConditionalGeneration (Qwen-Image's text encoder) with a 2-block, 64-wide vision tower
    (patch 14, temporal patch 2, 2 x 2 merge) and token ids 250-253 for image / video / vision start / end."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    _seeded(seed)
    text = _tiny_llm_text_config(vocab_size)
    text.pop("head_dim")
    text.pop("tie_word_embeddings")
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    cfg = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(
            depth=2, hidden_size=64, intermediate_size=128, num_heads=4, in_channels=3, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=64, fullatt_block_indexes=[1],
        ),
        image_token_id=250, video_token_id=251, vision_start_token_id=252, vision_end_token_id=253,
        tie_word_embeddings=False,
    )
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


def tiny_mistral3_text_encoder(seed: int = 0, vocab_size: int = 256):
    """Mistral3ForConditionalGeneration (FLUX.2's text encoder) with a 2-layer, 64-wide Pixtral vision tower
    (patch 14, images of 56) and its 2 x 2 patch-merging projector; image token id 250."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    _seeded(seed)
    text = _tiny_llm_text_config(vocab_size)
    text.pop("tie_word_embeddings")
    cfg = Mistral3Config(
        text_config=dict(model_type="mistral", sliding_window=None, **text),
        vision_config=dict(
            model_type="pixtral", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            head_dim=16, patch_size=14, image_size=56, num_channels=3,
        ),
        image_token_index=250, spatial_merge_size=2, vision_feature_layer=-1, multimodal_projector_bias=False,
        tie_word_embeddings=False,
    )
    return Mistral3ForConditionalGeneration(cfg).eval()


def tiny_umt5_encoder(seed: int = 0, vocab_size: int = 256):
    """UMT5EncoderModel (Wan's text encoder): 64 wide, 4 heads of 16, gated-GELU MLP 128, 2 layers."""
    from transformers import UMT5Config, UMT5EncoderModel

    _seeded(seed)
    cfg = UMT5Config(
        vocab_size=vocab_size, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
        is_encoder_decoder=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, tie_word_embeddings=False,
    )
    return UMT5EncoderModel(cfg).eval()


def tiny_vae(seed: int = 0, latent_channels: int = 4):
    from diffusers import AutoencoderKL

    _seeded(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=latent_channels, norm_num_groups=8, sample_size=64,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    ).eval()


def _tiny_diffusers(class_name: str, seed: int, dtype: torch.dtype, **config) -> torch.nn.Module:
    """diffusers' ``class_name`` with ``config``, seeded, cast to ``dtype``, in eval mode."""
    import diffusers

    _seeded(seed)
    return _cast(getattr(diffusers, class_name)(**config), dtype)


def tiny_flux_transformer(
    seed: int = 0, in_channels: int = 16, dtype: torch.dtype = torch.float32, num_layers: int = 1,
    num_single_layers: int = 1,
):
    """FluxTransformer2DModel: width 64 (2 heads x 32), 1 double + 1 single block by default."""
    from diffusers import FluxTransformer2DModel

    _seeded(seed)
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=in_channels, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=32,
        num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=False,
        axes_dims_rope=(8, 12, 12),
    )
    return _cast(model, dtype)


def tiny_pixart_transformer(seed: int = 0, dtype: torch.dtype = torch.float32):
    """PixArtTransformer2DModel (PixArt-Sigma style: ada_norm_single, caption projection)."""
    from diffusers import PixArtTransformer2DModel

    _seeded(seed)
    model = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=64, sample_size=8, patch_size=2, caption_channels=64,
        use_additional_conditions=False, norm_num_groups=32,
    )
    return _cast(model, dtype)


def tiny_sdxl_unet(seed: int = 0, dtype: torch.dtype = torch.float32):
    """UNet2DConditionModel with the SDXL structure (text_time added conditioning, linear projections)."""
    from diffusers import UNet2DConditionModel

    _seeded(seed)
    model = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(64, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 2), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=64 + 6 * 8, cross_attention_dim=64, norm_num_groups=32,
    )
    return _cast(model, dtype)


def tiny_sd3_transformer(seed: int = 0, dtype: torch.dtype = torch.float32):
    return _tiny_diffusers(
        "SD3Transformer2DModel", seed, dtype,
        sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=32,
        num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=64, pooled_projection_dim=64,
        out_channels=4, pos_embed_max_size=16,
    )


def tiny_sana_transformer(seed: int = 0, dtype: torch.dtype = torch.float32):
    from diffusers import SanaTransformer2DModel

    _seeded(seed)
    model = SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=32, num_layers=2,
        num_cross_attention_heads=2, cross_attention_head_dim=32, cross_attention_dim=64, caption_channels=64,
        mlp_ratio=2.5, sample_size=16, patch_size=1,
    )
    return _cast(model, dtype)


def tiny_flux2_transformer(seed: int = 0, dtype: torch.dtype = torch.float32, guidance_embeds: bool = True):
    """Flux2Transformer2DModel (FLUX.2): width 64 (2 heads x 32), SwiGLU 192, 1 double + 1 single block, text
    dim 64, four RoPE axes (T, H, W, L); guidance embedding as FLUX.2-dev (False: the klein models)."""
    from diffusers import Flux2Transformer2DModel

    _seeded(seed)
    model = Flux2Transformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=32, num_attention_heads=2,
        joint_attention_dim=64, timestep_guidance_channels=64, mlp_ratio=3.0, axes_dims_rope=(8, 8, 8, 8),
        guidance_embeds=guidance_embeds,
    )
    return _cast(model, dtype)


def tiny_wan_transformer(seed: int = 0, dtype: torch.dtype = torch.float32):
    """WanTransformer3DModel (Wan 2.1 / 2.2 text-to-video): width 64 (2 heads x 32), FFN 128, 2 blocks, text dim
    64, 16 latent channels, patches of (1, 2, 2)."""
    from diffusers import WanTransformer3DModel

    _seeded(seed)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=16, out_channels=16,
        text_dim=64, freq_dim=256, ffn_dim=128, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=1e-6, rope_max_seq_len=32,
    )
    return _cast(model, dtype)


def tiny_qwenimage_transformer(seed: int = 0, dtype: torch.dtype = torch.float32):
    """QwenImageTransformer2DModel (Qwen-Image): width 64 (2 heads x 32), MLP 256, 2 blocks, text dim 64, 16
    latent channels in 2 x 2 patches, RoPE axes (8, 12, 12)."""
    from diffusers import QwenImageTransformer2DModel

    _seeded(seed)
    model = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=32, num_attention_heads=2,
        joint_attention_dim=64, guidance_embeds=False, axes_dims_rope=(8, 12, 12),
    )
    return _cast(model, dtype)


def tiny_zimage_transformer(seed: int = 0, dtype: torch.dtype = torch.float32):
    """ZImageTransformer2DModel (Z-Image): width 192 (6 heads x 32; its SwiGLU width is 8 / 3 of it, 512 here, so
    every linear takes groups of 64), 1 noise + 1 context refiner block, 2 main layers, caption dim 64."""
    from diffusers import ZImageTransformer2DModel

    _seeded(seed)
    model = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=192, n_layers=2, n_refiner_layers=1,
        n_heads=6, n_kv_heads=6, qk_norm=True, cap_feat_dim=64, axes_dims=[8, 12, 12], axes_lens=[256, 64, 64],
    )
    return _cast(model, dtype)


def tiny_chroma_transformer(seed: int = 0, dtype: torch.dtype = torch.float32):
    """ChromaTransformer2DModel (Chroma1): width 64 (2 heads x 32), 1 double + 1 single block, text dim 64, 64 packed
    latent channels, its modulation approximator 64 -> 128 (2 layers) -> 64."""
    return _tiny_diffusers(
        "ChromaTransformer2DModel", seed, dtype,
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=32, num_attention_heads=2,
        joint_attention_dim=64, axes_dims_rope=(8, 12, 12), approximator_num_channels=64, approximator_hidden_dim=128,
        approximator_layers=2,
    )


def tiny_hunyuanvideo_transformer(seed: int = 0, dtype: torch.dtype = torch.float32):
    """HunyuanVideoTransformer3DModel: width 64 (2 heads x 32), MLP 256, 1 token-refiner + 1 double + 1 single
    block, text and pooled dims 64, 16 latent channels in (1, 2, 2) patches, guidance embedding."""
    return _tiny_diffusers(
        "HunyuanVideoTransformer3DModel", seed, dtype,
        in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=32, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, mlp_ratio=4.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm",
        guidance_embeds=True, text_embed_dim=64, pooled_projection_dim=64, rope_axes_dim=(8, 12, 12),
    )


def tiny_ltxvideo_transformer(seed: int = 0, dtype: torch.dtype = torch.float32):
    """LTXVideoTransformer3DModel (LTX-Video 0.9): width 64 (2 heads x 32), FFN 256, 2 blocks, text dim 64, 64 latent
    channels, patch 1 x 1 x 1."""
    return _tiny_diffusers(
        "LTXVideoTransformer3DModel", seed, dtype,
        in_channels=64, out_channels=64, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=32,
        cross_attention_dim=64, num_layers=2, caption_channels=64,
    )


def tiny_cogview4_transformer(seed: int = 0, dtype: torch.dtype = torch.float32):
    """CogView4Transformer2DModel: width 64 (2 heads x 32), FFN 256, 2 blocks, text dim 64, time embedding 64, size
    conditions 3 x 2 x 32, 16 latent channels in 2 x 2 patches."""
    return _tiny_diffusers(
        "CogView4Transformer2DModel", seed, dtype,
        patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=32, num_attention_heads=2,
        text_embed_dim=64, time_embed_dim=64, condition_dim=32, pos_embed_max_size=16, sample_size=16,
        rope_axes_dim=(16, 16),
    )


def tiny_lumina2_transformer(seed: int = 0, dtype: torch.dtype = torch.float32):
    """Lumina2Transformer2DModel (Lumina-Image 2.0): width 128 (4 query / 2 key-value heads of 32), SwiGLU 384, 1 noise
    + 1 context refiner block, 2 main layers, caption dim 64, 16 latent channels in 2 x 2 patches."""
    return _tiny_diffusers(
        "Lumina2Transformer2DModel", seed, dtype,
        sample_size=16, patch_size=2, in_channels=16, hidden_size=128, num_layers=2, num_refiner_layers=1,
        num_attention_heads=4, num_kv_heads=2, multiple_of=64, axes_dim_rope=(8, 12, 12), axes_lens=(64, 32, 32),
        cap_feat_dim=64,
    )


def tiny_hidream_transformer(seed: int = 0, dtype: torch.dtype = torch.float32):
    """HiDreamImageTransformer2DModel (HiDream-I1): width 128 (4 heads x 32), 1 double + 1 single block, each a MoE of
    4 routed experts (top 2) and a shared one, T5 / Llama-3 / pooled dims 64, 16 latent channels in 2 x 2 patches."""
    return _tiny_diffusers(
        "HiDreamImageTransformer2DModel", seed, dtype,
        patch_size=2, in_channels=16, out_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=32,
        num_attention_heads=4, caption_channels=[64, 64], text_emb_dim=64, num_routed_experts=4,
        num_activated_experts=2, axes_dims_rope=(16, 8, 8), max_resolution=(16, 16), llama_layers=[1, 2],
    )


def tiny_cogvideox_transformer(seed: int = 0, dtype: torch.dtype = torch.float32):
    """CogVideoXTransformer3DModel in CogVideoX 1.5 image-to-video's layout: width 64 (2 heads x 32), 2 blocks, time /
    frame-offset embeddings 64, text dim 64, 32 latent channels in (16 noise + 16 image), (2, 2, 2) patches."""
    return _tiny_diffusers(
        "CogVideoXTransformer3DModel", seed, dtype,
        num_attention_heads=2, attention_head_dim=32, in_channels=32, out_channels=16, time_embed_dim=64,
        ofs_embed_dim=64, text_embed_dim=64, num_layers=2, sample_width=8, sample_height=8, sample_frames=9,
        patch_size=2, patch_size_t=2, max_text_seq_length=8, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False, patch_bias=False,
    )


def tiny_mochi_transformer(seed: int = 0, dtype: torch.dtype = torch.float32):
    """MochiTransformer3DModel: width 192 (3 heads x 64; its SwiGLU width 8 / 3 of it, 512), 2 blocks, text dim 64,
    12 latent channels in 2 x 2 patches."""
    return _tiny_diffusers(
        "MochiTransformer3DModel", seed, dtype,
        patch_size=2, num_attention_heads=3, attention_head_dim=64, num_layers=2, pooled_projection_dim=192,
        in_channels=12, text_embed_dim=64, time_embed_dim=256, max_sequence_length=8,
    )


def tiny_auraflow_transformer(seed: int = 0, dtype: torch.dtype = torch.float32):
    """AuraFlowTransformer2DModel: width 64 (2 heads x 32), 1 joint + 1 single block, text dim 64, 4 latent channels
    in 2 x 2 patches."""
    return _tiny_diffusers(
        "AuraFlowTransformer2DModel", seed, dtype,
        sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=1,
        attention_head_dim=32, num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=64,
        out_channels=4, pos_embed_max_size=64,
    )


def tiny_sanavideo_transformer(seed: int = 0, dtype: torch.dtype = torch.float32):
    """SanaVideoTransformer3DModel: width 64 (2 heads x 32), convolutional FFN, 2 blocks, caption dim 64, 16 latent
    channels in (1, 2, 2) patches."""
    return _tiny_diffusers(
        "SanaVideoTransformer3DModel", seed, dtype,
        in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=32, num_layers=2,
        num_cross_attention_heads=2, cross_attention_head_dim=32, cross_attention_dim=64, caption_channels=64,
        mlp_ratio=2.5, sample_size=8, patch_size=(1, 2, 2), rope_max_seq_len=32,
    )


def tiny_flux_pipeline(seed: int = 0, dtype: torch.dtype = torch.float32):
    """A complete random FluxPipeline (CLIP + T5 + transformer + VAE + scheduler) built offline."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    vae = tiny_vae(seed)
    in_channels = vae.config.latent_channels * 4
    tok = clip_tokenizer()
    tok2 = t5_tokenizer()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=tiny_clip_text_model(seed + 1, vocab_size=len(tok)),
        tokenizer=tok,
        text_encoder_2=tiny_t5_encoder(seed + 2, vocab_size=len(tok2)),
        tokenizer_2=tok2,
        transformer=tiny_flux_transformer(seed + 3, in_channels=in_channels),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype) if dtype != torch.float32 else pipe


def flux_inputs(seed: int = 0, steps: int = 2, size: int = 64) -> dict:
    """Call arguments for a deterministic tiny Flux generation (numpy output)."""
    return {
        "prompt": "a photo of a cat",
        "num_inference_steps": steps,
        "height": size,
        "width": size,
        "guidance_scale": 3.5,
        "max_sequence_length": 16,
        "output_type": "np",
        "generator": torch.Generator("cpu").manual_seed(seed),
    }


def save_tiny_flux_pipeline(path: str | os.PathLike, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """Build the tiny Flux pipeline and save it (safetensors) to ``path``; returns the path."""
    path = Path(path)
    tiny_flux_pipeline(seed, dtype).save_pretrained(path, safe_serialization=True)
    return path


def save_tiny_model(model: torch.nn.Module, path: str | os.PathLike | None = None, **save_kwargs) -> Path:
    """save_pretrained a tiny model into ``path`` (a new temporary directory when None)."""
    path = Path(path) if path is not None else Path(tempfile.mkdtemp(prefix="svdquant_tiny_"))
    model.save_pretrained(path, safe_serialization=True, **save_kwargs)
    return path


def model_inputs(model: torch.nn.Module, seed: int = 0, batch: int = 1) -> dict:
    """Deterministic random forward kwargs for the tiny denoisers above (by class name)."""
    g = torch.Generator().manual_seed(seed)
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():  # the compute dtype: most weights' (some modules may be kept in fp32)
        counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    dtype = max(counts, key=counts.get)
    name = type(model).__name__
    cfg = model.config

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype)

    t = torch.full((batch,), 500.0)
    if name == "FluxTransformer2DModel":
        n_img, n_txt = 16, 7
        img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)
        return {
            "hidden_states": rnd(batch, n_img, cfg.in_channels),
            "encoder_hidden_states": rnd(batch, n_txt, cfg.joint_attention_dim),
            "pooled_projections": rnd(batch, cfg.pooled_projection_dim),
            "timestep": t / 1000,
            "img_ids": img_ids.reshape(-1, 3),
            "txt_ids": torch.zeros(n_txt, 3),
            "return_dict": False,
        }
    if name == "PixArtTransformer2DModel":
        return {
            "hidden_states": rnd(batch, cfg.in_channels, 8, 8),
            "encoder_hidden_states": rnd(batch, 5, cfg.caption_channels),
            "timestep": t.long(),
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
            "return_dict": False,
        }
    if name == "UNet2DConditionModel":
        return {
            "sample": rnd(batch, cfg.in_channels, 16, 16),
            "timestep": t,
            "encoder_hidden_states": rnd(batch, 7, cfg.cross_attention_dim),
            "added_cond_kwargs": {"text_embeds": rnd(batch, 64), "time_ids": rnd(batch, 6)},
            "return_dict": False,
        }
    if name == "SD3Transformer2DModel":
        return {
            "hidden_states": rnd(batch, cfg.in_channels, 8, 8),
            "encoder_hidden_states": rnd(batch, 7, cfg.joint_attention_dim),
            "pooled_projections": rnd(batch, cfg.pooled_projection_dim),
            "timestep": t,
            "return_dict": False,
        }
    if name == "SanaTransformer2DModel":
        return {
            "hidden_states": rnd(batch, cfg.in_channels, 8, 8),
            "encoder_hidden_states": rnd(batch, 7, cfg.caption_channels),
            "timestep": t,
            "return_dict": False,
        }
    if name == "Flux2Transformer2DModel":  # as Flux2Pipeline: 4 x 4 latent tokens, 4-axis int ids (T, H, W, L)
        n_txt, z = 7, torch.arange(1)
        img_ids = torch.cartesian_prod(z, torch.arange(4), torch.arange(4), z)
        txt_ids = torch.cartesian_prod(z, z, z, torch.arange(n_txt))
        return {
            "hidden_states": rnd(batch, 16, cfg.in_channels),
            "encoder_hidden_states": rnd(batch, n_txt, cfg.joint_attention_dim),
            "timestep": (t / 1000).to(dtype),
            "guidance": torch.full((batch,), 4.0) if cfg.guidance_embeds else None,
            "img_ids": img_ids.expand(batch, -1, -1),
            "txt_ids": txt_ids.expand(batch, -1, -1),
            "return_dict": False,
        }
    if name == "WanTransformer3DModel":  # video latents: 2 frames of 8 x 8 (32 tokens after the patches)
        return {
            "hidden_states": rnd(batch, cfg.in_channels, 2, 8, 8),
            "timestep": t,
            "encoder_hidden_states": rnd(batch, 7, cfg.text_dim),
            "return_dict": False,
        }
    if name == "QwenImageTransformer2DModel":  # as QwenImagePipeline: an 8 x 8 latent in 2 x 2 patches, masked text
        n_txt = 7
        mask = torch.zeros(batch, n_txt, dtype=torch.long)
        for i in range(batch):
            mask[i, : n_txt - i % 3] = 1
        return {
            "hidden_states": rnd(batch, 16, cfg.in_channels),
            "encoder_hidden_states": rnd(batch, n_txt, cfg.joint_attention_dim),
            "encoder_hidden_states_mask": None if mask.all() else mask,
            "timestep": (t / 1000).to(dtype),
            "img_shapes": [[(1, 4, 4)]] * batch,
            "return_dict": False,
        }
    if name == "ZImageTransformer2DModel":  # as ZImagePipeline: per-sample lists, captions without padding
        return {
            "x": [rnd(cfg.in_channels, 1, 8, 8) for _ in range(batch)],
            "t": ((1000 - t) / 1000).to(dtype),
            "cap_feats": [rnd(7 - i % 3, cfg.cap_feat_dim) for i in range(batch)],
            "return_dict": False,
        }
    def text_mask(n_txt: int) -> torch.Tensor:  # an int mask, later samples padded more
        mask = torch.zeros(batch, n_txt, dtype=torch.long)
        for i in range(batch):
            mask[i, : n_txt - 2 - i % 3] = 1
        return mask

    if name == "ChromaTransformer2DModel":  # as ChromaPipeline: 4 x 4 packed tokens, a (B, txt + img) boolean mask
        n_img, n_txt = 16, 7
        img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)
        mask = torch.ones(batch, n_txt + n_img, dtype=torch.bool)
        for i in range(batch):
            mask[i, n_txt - i % 3: n_txt] = False
        return {
            "hidden_states": rnd(batch, n_img, cfg.in_channels),
            "encoder_hidden_states": rnd(batch, n_txt, cfg.joint_attention_dim),
            "timestep": (t / 1000).to(dtype),
            "img_ids": img_ids.reshape(-1, 3),
            "txt_ids": torch.zeros(n_txt, 3),
            "attention_mask": mask,
            "return_dict": False,
        }
    if name == "HunyuanVideoTransformer3DModel":  # 2 frames of 8 x 8 latents, guidance * 1000 as the pipeline
        return {
            "hidden_states": rnd(batch, cfg.in_channels, 2, 8, 8),
            "timestep": t.to(dtype),
            "encoder_hidden_states": rnd(batch, 8, cfg.text_embed_dim),
            "encoder_attention_mask": text_mask(8),
            "pooled_projections": rnd(batch, cfg.pooled_projection_dim),
            "guidance": torch.full((batch,), 6000.0).to(dtype),
            "return_dict": False,
        }
    if name == "LTXVideoTransformer3DModel":  # packed latents: 2 frames of 4 x 4 tokens
        return {
            "hidden_states": rnd(batch, 32, cfg.in_channels),
            "encoder_hidden_states": rnd(batch, 8, cfg.caption_channels),
            "timestep": t,
            "encoder_attention_mask": text_mask(8),
            "num_frames": 2,
            "height": 4,
            "width": 4,
            "rope_interpolation_scale": (8 / 25, 32, 32),
            "return_dict": False,
        }
    if name == "CogView4Transformer2DModel":  # the pipeline pads prompts to a multiple of 16 tokens
        size = torch.tensor([[64.0, 64.0]] * batch).to(dtype)
        return {
            "hidden_states": rnd(batch, cfg.in_channels, 8, 8),
            "encoder_hidden_states": rnd(batch, 16, cfg.text_embed_dim),
            "timestep": t,
            "original_size": size,
            "target_size": size.clone(),
            "crop_coords": torch.zeros(batch, 2).to(dtype),
            "return_dict": False,
        }
    if name == "Lumina2Transformer2DModel":  # timestep 1 - t / 1000 as the pipeline
        return {
            "hidden_states": rnd(batch, cfg.in_channels, 8, 8),
            "timestep": 1 - t / 1000,
            "encoder_hidden_states": rnd(batch, 8, cfg.cap_feat_dim),
            "encoder_attention_mask": text_mask(8),
            "return_dict": False,
        }
    if name == "HiDreamImageTransformer2DModel":  # Llama-3's hidden states of every layer stacked: (3, B, 8, D)
        return {
            "hidden_states": rnd(batch, cfg.in_channels, 8, 8),
            "timesteps": t,
            "encoder_hidden_states_t5": rnd(batch, 8, cfg.caption_channels[0]),
            "encoder_hidden_states_llama3": rnd(3, batch, 8, cfg.caption_channels[1]),
            "pooled_embeds": rnd(batch, cfg.text_emb_dim),
            "return_dict": False,
        }
    if name == "CogVideoXTransformer3DModel":  # frames first: (B, 4, C, 8, 8) -> 32 tokens; 3-D RoPE as the pipeline
        from diffusers.models.embeddings import get_3d_rotary_pos_embed

        p, p_t = cfg.patch_size, cfg.patch_size_t
        rope = get_3d_rotary_pos_embed(
            embed_dim=cfg.attention_head_dim, crops_coords=None, grid_size=(8 // p, 8 // p),
            temporal_size=(4 + p_t - 1) // p_t, grid_type="slice",
            max_size=(cfg.sample_height // p, cfg.sample_width // p),
        )
        return {
            "hidden_states": rnd(batch, 4, cfg.in_channels, 8, 8),
            "encoder_hidden_states": rnd(batch, 8, cfg.text_embed_dim),
            "timestep": t.long(),
            "ofs": torch.full((1,), 2.0).to(dtype) if cfg.ofs_embed_dim else None,
            "image_rotary_emb": rope,
            "return_dict": False,
        }
    if name == "MochiTransformer3DModel":
        return {
            "hidden_states": rnd(batch, cfg.in_channels, 2, 8, 8),
            "encoder_hidden_states": rnd(batch, 8, cfg.text_embed_dim),
            "timestep": t.to(dtype),
            "encoder_attention_mask": text_mask(8).bool(),
            "return_dict": False,
        }
    if name == "AuraFlowTransformer2DModel":  # the pipeline zeroes padded text tokens and passes no mask
        txt = rnd(batch, 8, cfg.joint_attention_dim) * text_mask(8)[..., None].to(dtype)
        return {
            "hidden_states": rnd(batch, cfg.in_channels, 8, 8),
            "encoder_hidden_states": txt,
            "timestep": (t / 1000).to(dtype),
            "return_dict": False,
        }
    if name == "SanaVideoTransformer3DModel":
        return {
            "hidden_states": rnd(batch, cfg.in_channels, 2, 8, 8),
            "encoder_hidden_states": rnd(batch, 8, cfg.caption_channels),
            "encoder_attention_mask": text_mask(8),
            "timestep": t,
            "return_dict": False,
        }
    raise ValueError(f"model_inputs: no inputs known for {name}")


TINY_BUILDERS = {
    "flux": tiny_flux_transformer,
    "chroma": tiny_chroma_transformer,
    "hunyuanvideo": tiny_hunyuanvideo_transformer,
    "ltxvideo": tiny_ltxvideo_transformer,
    "cogview4": tiny_cogview4_transformer,
    "lumina2": tiny_lumina2_transformer,
    "hidream": tiny_hidream_transformer,
    "cogvideox": tiny_cogvideox_transformer,
    "mochi": tiny_mochi_transformer,
    "auraflow": tiny_auraflow_transformer,
    "sanavideo": tiny_sanavideo_transformer,
    "flux2": tiny_flux2_transformer,
    "qwenimage": tiny_qwenimage_transformer,
    "wan": tiny_wan_transformer,
    "zimage": tiny_zimage_transformer,
    "pixart": tiny_pixart_transformer,
    "sdxl": tiny_sdxl_unet,
    "sd3": tiny_sd3_transformer,
    "sana": tiny_sana_transformer,
}

__all__ = [
    "TINY_BUILDERS",
    "clip_tokenizer",
    "flux_inputs",
    "model_inputs",
    "save_tiny_flux_pipeline",
    "save_tiny_model",
    "t5_tokenizer",
    "tiny_auraflow_transformer",
    "tiny_chroma_transformer",
    "tiny_cogvideox_transformer",
    "tiny_clip_text_model",
    "tiny_cogview4_transformer",
    "tiny_hidream_transformer",
    "tiny_hunyuanvideo_transformer",
    "tiny_ltxvideo_transformer",
    "tiny_lumina2_transformer",
    "tiny_mochi_transformer",
    "tiny_sanavideo_transformer",
    "tiny_flux_pipeline",
    "tiny_gemma2_text_encoder",
    "tiny_glm_text_encoder",
    "tiny_llama_text_encoder",
    "tiny_flux2_transformer",
    "tiny_flux_transformer",
    "tiny_pixart_transformer",
    "tiny_qwenimage_transformer",
    "tiny_sana_transformer",
    "tiny_sd3_transformer",
    "tiny_sdxl_unet",
    "tiny_mistral3_text_encoder",
    "tiny_qwen2_5_vl_text_encoder",
    "tiny_qwen3_text_encoder",
    "tiny_t5_encoder",
    "tiny_umt5_encoder",
    "tiny_vae",
    "tiny_wan_transformer",
    "tiny_zimage_transformer",
]
