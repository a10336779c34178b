//! The conditional UNet of Stable Diffusion, built from diffusers' `UNet2DConditionModel` config.
//!
//! We assemble it from candle's public parts (`ResnetBlock2D`, the timestep embedding) rather than
//! use candle's `UNet2DConditionModel`, for reasons found by the parity tests and the GPU path:
//! candle's GEGLU feed-forward uses the tanh approximation of GELU where diffusers uses the exact
//! (erf) GELU — a 1e-4 relative difference per UNet call that compounds over the steps —, candle
//! builds the plain down/up blocks with 32 groups whatever `norm_num_groups` says, and candle's
//! `CrossAttention` casts q, k and v to f32, which in f16 would run the largest matrix products of
//! the model (4096 × 4096 scores per head at 512 px) without tensor cores and double their memory.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn as nn;

use super::conv::Conv2d;
use candle_transformers::models::stable_diffusion::embeddings::{TimestepEmbedding, Timesteps};

use super::fused::GroupNormSilu;
use super::geglu::geglu;
use super::resnet::{ResnetBlock2D, ResnetBlock2DConfig};
use super::softmax::softmax_last_dim;

/// A UNet architecture, as read from `unet/config.json` by [`super::config::unet_spec`].
#[derive(Clone, Debug, PartialEq)]
pub struct UNetConfig {
    /// Latent channels in (4).
    pub in_channels: usize,
    /// Channels predicted (4).
    pub out_channels: usize,
    /// Latent side length the model was trained at.
    pub sample_size: usize,
    /// Channels of each block, highest resolution first.
    pub block_out_channels: Vec<usize>,
    /// Per down block (the up path mirrors it): whether it has cross-attention transformers.
    pub cross_attention: Vec<bool>,
    /// Attention heads per block.
    pub heads: Vec<usize>,
    /// Transformer layers per attention block, per block.
    pub transformer_layers: Vec<usize>,
    /// ResNet layers per down block (one more per up block).
    pub layers_per_block: usize,
    /// Padding of the downsampling convolutions.
    pub downsample_padding: usize,
    /// The mid block's residual scale.
    pub mid_block_scale_factor: f64,
    /// Groups of every group norm.
    pub norm_num_groups: usize,
    /// ε of every group norm.
    pub norm_eps: f64,
    /// Width of the text embeddings cross-attention reads (768 for SD 1.5).
    pub cross_attention_dim: usize,
    /// Linear instead of 1×1-convolution projections in and out of the transformers.
    pub use_linear_projection: bool,
    /// Scale the input to [−1, 1] first.
    pub center_input_sample: bool,
    /// Timestep embedding as [cos, sin] instead of [sin, cos].
    pub flip_sin_to_cos: bool,
    /// The timestep embedding's frequency shift.
    pub freq_shift: f64,
}

impl UNetConfig {
    /// How much the UNet downsamples its input (2^(blocks − 1)).
    pub fn downsampling(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

fn conv(
    vb: nn::VarBuilder,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
) -> Result<Conv2d> {
    let cfg = nn::Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    Conv2d::new(cin, cout, k, cfg, vb)
}

/// GEGLU feed-forward with the exact (erf) GELU, as diffusers computes it.
#[derive(Debug)]
struct FeedForward {
    proj: nn::Linear,
    out: nn::Linear,
}

impl FeedForward {
    fn new(vb: nn::VarBuilder, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(FeedForward {
            proj: nn::linear(dim, inner * 2, vb.pp("net.0.proj"))?,
            out: nn::linear(inner, dim, vb.pp("net.2"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.out.forward(&geglu(&self.proj.forward(xs)?)?)
    }
}

/// diffusers' `Attention` (no bias on q, k, v): multi-head scaled dot-product attention computed
/// in the activations' dtype, so that half-precision products use the GPU's half-precision units.
#[derive(Debug)]
struct Attention {
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    fn new(
        vb: nn::VarBuilder,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Attention {
            to_q: nn::linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: nn::linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: nn::linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: nn::linear(inner, query_dim, vb.pp("to_out.0"))?,
            heads,
            scale: 1.0 / (head_dim as f64).sqrt(),
        })
    }

    /// `[b, len, heads · head_dim]` → `[b, heads, len, head_dim]`.
    fn split_heads(&self, t: Tensor) -> Result<Tensor> {
        let (b, len, c) = t.dims3()?;
        t.reshape((b, len, self.heads, c / self.heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// The keys and values of `context` `[b, m, context_dim]`, split into heads.
    fn keys_values(&self, context: &Tensor) -> Result<KeysValues> {
        Ok(KeysValues {
            keys: self.split_heads(self.to_k.forward(context)?)?,
            values: self.split_heads(self.to_v.forward(context)?)?,
        })
    }

    /// `xs` `[b, n, query_dim]` attends to a context's keys and values (its own when `None`).
    fn forward(&self, xs: &Tensor, context: Option<&KeysValues>) -> Result<Tensor> {
        let (b, n, _) = xs.dims3()?;
        let own;
        let KeysValues { keys, values } = match context {
            Some(kv) => kv,
            None => {
                own = self.keys_values(xs)?;
                &own
            }
        };
        let q = self.split_heads((self.to_q.forward(xs)? * self.scale)?)?;
        let scores = q.matmul(&keys.t()?)?;
        // candle's CUDA softmax accumulates half-precision rows in f32; its CPU one accumulates in
        // the input type, where a 4096-long f16 sum is off by whole units: upcast there only.
        let probs = if scores.dtype() != DType::F32 && scores.device().is_cpu() {
            softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(scores.dtype())?
        } else {
            softmax_last_dim(&scores)?
        };
        let out = probs.matmul(values)?.transpose(1, 2)?.reshape((b, n, ()))?;
        self.to_out.forward(&out)
    }
}

/// One attention's keys and values, `[b, heads, len, head_dim]` each.
#[derive(Debug, Clone)]
struct KeysValues {
    keys: Tensor,
    values: Tensor,
}

/// The text conditioning made ready for every cross-attention of one [`UNet`]: each transformer
/// block's keys and values of the context. They depend on the prompts only, so a denoising loop
/// computes them once per batch of prompts ([`UNet::prepare_context`]) instead of at every step.
#[derive(Debug, Clone)]
pub struct PreparedContext {
    per_block: Vec<KeysValues>,
}

/// Hands out a [`PreparedContext`]'s blocks in the order the UNet visits its transformers.
struct ContextCursor<'a>(std::slice::Iter<'a, KeysValues>);

impl<'a> ContextCursor<'a> {
    fn next(&mut self) -> Result<&'a KeysValues> {
        self.0
            .next()
            .ok_or_else(|| candle_core::Error::Msg("a context prepared for a smaller UNet".into()))
    }
}

#[derive(Debug)]
struct TransformerBlock {
    norm1: nn::LayerNorm,
    attn1: Attention,
    norm2: nn::LayerNorm,
    attn2: Attention,
    norm3: nn::LayerNorm,
    ff: FeedForward,
}

impl TransformerBlock {
    fn new(vb: nn::VarBuilder, dim: usize, heads: usize, context_dim: usize) -> Result<Self> {
        let head_dim = dim / heads;
        Ok(TransformerBlock {
            norm1: nn::layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads, head_dim)?,
            norm2: nn::layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, context_dim, heads, head_dim)?,
            norm3: nn::layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    fn forward(&self, xs: &Tensor, context: &KeysValues) -> Result<Tensor> {
        let xs = (self.attn1.forward(&self.norm1.forward(xs)?, None)? + xs)?;
        let xs = (self
            .attn2
            .forward(&self.norm2.forward(&xs)?, Some(context))?
            + xs)?;
        self.ff.forward(&self.norm3.forward(&xs)?)? + xs
    }
}

#[derive(Debug)]
enum Projection {
    Conv(Conv2d),
    Linear(nn::Linear),
}

/// diffusers' `Transformer2DModel`: group norm, project in, transformer blocks, project out, residual.
#[derive(Debug)]
struct Transformer2D {
    norm: GroupNormSilu,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

impl Transformer2D {
    fn new(
        vb: nn::VarBuilder,
        channels: usize,
        heads: usize,
        layers: usize,
        cfg: &UNetConfig,
    ) -> Result<Self> {
        let norm = GroupNormSilu::new(cfg.norm_num_groups, channels, 1e-6, false, vb.pp("norm"))?;
        let (proj_in, proj_out) = if cfg.use_linear_projection {
            (
                Projection::Linear(nn::linear(channels, channels, vb.pp("proj_in"))?),
                Projection::Linear(nn::linear(channels, channels, vb.pp("proj_out"))?),
            )
        } else {
            (
                Projection::Conv(conv(vb.pp("proj_in"), channels, channels, 1, 1, 0)?),
                Projection::Conv(conv(vb.pp("proj_out"), channels, channels, 1, 1, 0)?),
            )
        };
        let blocks = (0..layers)
            .map(|i| {
                TransformerBlock::new(
                    vb.pp(format!("transformer_blocks.{i}")),
                    channels,
                    heads,
                    cfg.cross_attention_dim,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Transformer2D {
            norm,
            proj_in,
            blocks,
            proj_out,
        })
    }

    fn forward(&self, xs: &Tensor, context: &mut ContextCursor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let to_tokens = |t: Tensor| t.permute((0, 2, 3, 1))?.reshape((b, h * w, c));
        let to_map = |t: Tensor| t.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous();
        let normed = self.norm.forward(xs, None)?;
        let mut tokens = match &self.proj_in {
            Projection::Conv(p) => to_tokens(p.forward(&normed)?)?,
            Projection::Linear(p) => p.forward(&to_tokens(normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context.next()?)?;
        }
        match &self.proj_out {
            Projection::Conv(p) => p.forward_add(&to_map(tokens)?, xs),
            Projection::Linear(p) => to_map(p.forward(&tokens)?)? + xs,
        }
    }
}

fn resnet(
    vb: nn::VarBuilder,
    cin: usize,
    cout: usize,
    temb: usize,
    cfg: &UNetConfig,
    scale: f64,
) -> Result<ResnetBlock2D> {
    let rc = ResnetBlock2DConfig {
        out_channels: Some(cout),
        temb_channels: Some(temb),
        groups: cfg.norm_num_groups,
        groups_out: None,
        eps: cfg.norm_eps,
        use_in_shortcut: None,
        output_scale_factor: scale,
    };
    ResnetBlock2D::new(vb, cin, rc)
}

/// A resnet followed, in attention blocks, by a transformer.
#[derive(Debug)]
struct Layer {
    resnet: ResnetBlock2D,
    attention: Option<Transformer2D>,
}

impl Layer {
    fn forward(&self, xs: &Tensor, temb: &Tensor, context: &mut ContextCursor) -> Result<Tensor> {
        let xs = self.resnet.forward(xs, Some(temb))?;
        match &self.attention {
            Some(a) => a.forward(&xs, context),
            None => Ok(xs),
        }
    }
}

#[derive(Debug)]
struct DownBlock {
    layers: Vec<Layer>,
    downsampler: Option<Conv2d>,
}

#[derive(Debug)]
struct UpBlock {
    layers: Vec<Layer>,
    upsampler: Option<Conv2d>,
}

#[derive(Debug)]
struct MidBlock {
    first: ResnetBlock2D,
    rest: Vec<(Transformer2D, ResnetBlock2D)>,
}

/// diffusers' `UNet2DConditionModel` (CrossAttn/plain down and up blocks, cross-attention mid block).
#[derive(Debug)]
pub struct UNet {
    conv_in: Conv2d,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    down: Vec<DownBlock>,
    mid: MidBlock,
    up: Vec<UpBlock>,
    norm_out: GroupNormSilu,
    conv_out: Conv2d,
    config: UNetConfig,
}

impl UNet {
    /// Builds the UNet from weights in diffusers' names.
    pub fn new(vb: nn::VarBuilder, cfg: &UNetConfig) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let temb = ch[0] * 4;
        // Layer `j` of a down or up block mirroring down block `block`: a resnet from `cin` to
        // `cout` channels, then the block's attention when it has one.
        let layer = |bvb: &nn::VarBuilder,
                     j: usize,
                     block: usize,
                     cin: usize,
                     cout: usize|
         -> Result<Layer> {
            let resnet = resnet(bvb.pp(format!("resnets.{j}")), cin, cout, temb, cfg, 1.0)?;
            let attention = cfg.cross_attention[block]
                .then(|| {
                    Transformer2D::new(
                        bvb.pp(format!("attentions.{j}")),
                        cout,
                        cfg.heads[block],
                        cfg.transformer_layers[block],
                        cfg,
                    )
                })
                .transpose()?;
            Ok(Layer { resnet, attention })
        };

        let mut down = Vec::with_capacity(n);
        for i in 0..n {
            let bvb = vb.pp(format!("down_blocks.{i}"));
            let cin = if i == 0 { ch[0] } else { ch[i - 1] };
            let layers = (0..cfg.layers_per_block)
                .map(|j| layer(&bvb, j, i, if j == 0 { cin } else { ch[i] }, ch[i]))
                .collect::<Result<Vec<_>>>()?;
            let downsampler = (i + 1 < n)
                .then(|| {
                    conv(
                        bvb.pp("downsamplers.0.conv"),
                        ch[i],
                        ch[i],
                        3,
                        2,
                        cfg.downsample_padding,
                    )
                })
                .transpose()?;
            down.push(DownBlock {
                layers,
                downsampler,
            });
        }

        let last = ch[n - 1];
        let mvb = vb.pp("mid_block");
        let scale = cfg.mid_block_scale_factor;
        let mid = MidBlock {
            first: resnet(mvb.pp("resnets.0"), last, last, temb, cfg, scale)?,
            rest: vec![(
                Transformer2D::new(
                    mvb.pp("attentions.0"),
                    last,
                    cfg.heads[n - 1],
                    cfg.transformer_layers[n - 1],
                    cfg,
                )?,
                resnet(mvb.pp("resnets.1"), last, last, temb, cfg, scale)?,
            )],
        };

        let mut up = Vec::with_capacity(n);
        for i in 0..n {
            let block = n - 1 - i; // the down block this up block mirrors
            let bvb = vb.pp(format!("up_blocks.{i}"));
            let out = ch[block];
            let prev = if i == 0 { last } else { ch[block + 1] };
            let skip_in = ch[block.saturating_sub(1)];
            let num = cfg.layers_per_block + 1;
            let layers = (0..num)
                .map(|j| {
                    let skip = if j + 1 == num { skip_in } else { out };
                    let cin = if j == 0 { prev } else { out };
                    layer(&bvb, j, block, cin + skip, out)
                })
                .collect::<Result<Vec<_>>>()?;
            let upsampler = (i + 1 < n)
                .then(|| conv(bvb.pp("upsamplers.0.conv"), out, out, 3, 1, 1))
                .transpose()?;
            up.push(UpBlock { layers, upsampler });
        }

        Ok(UNet {
            conv_in: conv(vb.pp("conv_in"), cfg.in_channels, ch[0], 3, 1, 1)?,
            time_proj: Timesteps::new(ch[0], cfg.flip_sin_to_cos, cfg.freq_shift),
            time_embedding: TimestepEmbedding::new(vb.pp("time_embedding"), ch[0], temb)?,
            down,
            mid,
            up,
            norm_out: GroupNormSilu::new(
                cfg.norm_num_groups,
                ch[0],
                cfg.norm_eps,
                true,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: conv(vb.pp("conv_out"), ch[0], cfg.out_channels, 3, 1, 1)?,
            config: cfg.clone(),
        })
    }

    /// Its architecture.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Predicts the noise (or v, or x₀) of `xs` at `timestep`, one context row per batch row.
    pub fn forward(&self, xs: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        self.forward_prepared(xs, timestep, &self.prepare_context(context)?)
    }

    /// Every transformer, in the order [`UNet::forward_prepared`] visits them.
    fn transformers(&self) -> impl Iterator<Item = &Transformer2D> {
        let down = self.down.iter().flat_map(|b| &b.layers);
        let up = self.up.iter().flat_map(|b| &b.layers);
        fn in_layers(l: &Layer) -> Option<&Transformer2D> {
            l.attention.as_ref()
        }
        let mid = self.mid.rest.iter().map(|(t, _)| t);
        down.filter_map(in_layers)
            .chain(mid)
            .chain(up.filter_map(in_layers))
    }

    /// The keys and values of `context` `[b, m, cross_attention_dim]` for every cross-attention.
    pub fn prepare_context(&self, context: &Tensor) -> Result<PreparedContext> {
        let per_block = self
            .transformers()
            .flat_map(|t| &t.blocks)
            .map(|block| block.attn2.keys_values(context))
            .collect::<Result<Vec<_>>>()?;
        Ok(PreparedContext { per_block })
    }

    /// [`UNet::forward`] with the context already prepared (by this UNet).
    pub fn forward_prepared(
        &self,
        xs: &Tensor,
        timestep: f64,
        context: &PreparedContext,
    ) -> Result<Tensor> {
        let context = &mut ContextCursor(context.per_block.iter());
        let (b, _, h, w) = xs.dims4()?;
        let f = self.config.downsampling();
        let odd_size = h % f != 0 || w % f != 0;
        let xs = if self.config.center_input_sample {
            ((xs * 2.0)? - 1.0)?
        } else {
            xs.clone()
        };
        // The sinusoids are computed in f32 and cast afterwards, as diffusers does: in f16 the
        // phase t·freq of t ≈ 1000 is only good to ±0.25 rad.
        let t = (Tensor::ones(b, DType::F32, xs.device())? * timestep)?;
        let temb = self
            .time_embedding
            .forward(&self.time_proj.forward(&t)?.to_dtype(xs.dtype())?)?;

        let mut xs = self.conv_in.forward(&xs)?;
        let mut skips = vec![xs.clone()];
        for block in &self.down {
            for layer in &block.layers {
                xs = layer.forward(&xs, &temb, context)?;
                skips.push(xs.clone());
            }
            if let Some(d) = &block.downsampler {
                xs = if self.config.downsample_padding == 0 {
                    d.forward(&xs.pad_with_zeros(D::Minus1, 0, 1)?.pad_with_zeros(
                        D::Minus2,
                        0,
                        1,
                    )?)?
                } else {
                    d.forward(&xs)?
                };
                skips.push(xs.clone());
            }
        }

        xs = self.mid.first.forward(&xs, Some(&temb))?;
        for (attn, res) in &self.mid.rest {
            xs = res.forward(&attn.forward(&xs, context)?, Some(&temb))?;
        }

        for block in &self.up {
            for layer in &block.layers {
                let skip = skips.pop().ok_or_else(|| {
                    candle_core::Error::Msg("UNet skip connections exhausted".into())
                })?;
                xs = layer.forward(&Tensor::cat(&[&xs, &skip], 1)?, &temb, context)?;
            }
            if let Some(u) = &block.upsampler {
                let (_, _, uh, uw) = xs.dims4()?;
                // diffusers upsamples to the next skip's size when the input is not a multiple of f.
                let (th, tw) = match (odd_size, skips.last()) {
                    (true, Some(s)) => {
                        let (_, _, sh, sw) = s.dims4()?;
                        (sh, sw)
                    }
                    _ => (2 * uh, 2 * uw),
                };
                xs = u.forward(&xs.upsample_nearest2d(th, tw)?)?;
            }
        }
        if context.0.next().is_some() {
            candle_core::bail!("a context prepared for a larger UNet");
        }
        self.conv_out.forward(&self.norm_out.forward(&xs, None)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn tiny(cross_attention: Vec<bool>) -> UNet {
        let cfg = UNetConfig {
            in_channels: 4,
            out_channels: 4,
            sample_size: 8,
            block_out_channels: vec![8, 16],
            cross_attention,
            heads: vec![2, 2],
            transformer_layers: vec![1, 2],
            layers_per_block: 1,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            norm_num_groups: 4,
            norm_eps: 1e-5,
            cross_attention_dim: 12,
            use_linear_projection: false,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
        };
        let varmap = nn::VarMap::new();
        let vb = nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        UNet::new(vb, &cfg).unwrap()
    }

    /// A prepared context gives exactly the plain call's output (so the blocks' keys and values
    /// are handed out in the order the transformers run), and one prepared by a UNet with other
    /// transformers is an error.
    #[test]
    fn prepared_context_equals_the_plain_call() {
        let dev = Device::Cpu;
        let unet = tiny(vec![true, true]);
        let xs = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &dev).unwrap();
        let context = Tensor::randn(0f32, 1.0, (2, 5, 12), &dev).unwrap();
        let plain = unet.forward(&xs, 500.0, &context).unwrap();
        let prepared = unet.prepare_context(&context).unwrap();
        // Transformer blocks: down 1 + 2, mid 2, up 2·2 + 2·1 (one more layer per up block).
        assert_eq!(prepared.per_block.len(), 11);
        let reused = unet.forward_prepared(&xs, 500.0, &prepared).unwrap();
        let diff = crate::diffusion::parity::compare("unet", &plain, &reused).unwrap();
        assert_eq!(diff.max_abs, 0.0);

        let fewer = tiny(vec![false, true]).prepare_context(&context).unwrap();
        assert!(unet.forward_prepared(&xs, 500.0, &fewer).is_err());
        let more = PreparedContext {
            per_block: [prepared.per_block.clone(), fewer.per_block].concat(),
        };
        assert!(unet.forward_prepared(&xs, 500.0, &more).is_err());
    }
}
