//! AdamW with decoupled weight decay, on f32 parameters updated in place.
//!
//! Two variants, both with bias correction (`t` is the parameter's step count, from 1):
//!
//! * [`AdamWVariant::Hf`] (the default): `transformers.AdamW` of transformers 4.17, which is what
//!   the 4.17 HF Trainer builds by default (`optim="adamw_hf"`), so what the reference CoT-MAE
//!   pretraining and Tevatron fine-tuning ran with:
//!   `m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g; p -= lr*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps);`
//!   then, on the updated `p`, `p -= lr*wd*p`.
//! * [`AdamWVariant::Torch`]: `torch.optim.AdamW`: `p *= 1 - lr*wd` first, then the moments,
//!   `p -= lr/(1-b1^t) * m/(sqrt(v)/sqrt(1-b2^t) + eps)`.
//!
//! They differ in where eps sits (HF's is effectively `eps/sqrt(1-b2^t)` larger early on) and in
//! decaying the old or the updated weights. Per-step scalars are computed in f64 like the Python
//! code and rounded once to f32, and each element follows torch's f32 operation order.
//!
//! Memory: per parameter name, `exp_avg` and `exp_avg_sq` (f32 tensors of the parameter's shape,
//! on the parameter's device) and its step count; one fused pass per parameter reads the gradient
//! and rewrites p, m and v.
//! Weight-decay groups follow the HF Trainer: no decay for names containing "bias" or
//! "LayerNorm.weight" (configurable). The state saves to a safetensors file (`<name>.exp_avg`,
//! `<name>.exp_avg_sq`, `<name>.step`, hyper-parameters in the metadata) for a bit-exact resume.
//!
//! Devices: a step runs where its parameters are, all of them on one device. On the CPU, rayon
//! over each parameter; on a GPU (feature `cuda`), one multi-tensor kernel launch for all of them
//! (`tensor::cuda::optim::adamw_step`), fed with the very scalars computed here and following the
//! same f32 operations in the same order, so both devices give the same bits. The moments follow
//! their parameter: a state loaded from a file (on the CPU) or kept from before the model moved is
//! moved to the parameter's device at its next step.

use super::{f32_values, f32_values_mut, one_device, CHUNK, PAR_THRESHOLD};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use tensor::safetensors::{save, SafeTensors};
use tensor::{bail, DType, Device, Result, Tensor};

/// Where in a shared half-copy buffer a parameter's copy lies: `bases[base]` of
/// [`AdamW::step_with_fused_half_copies`], from element `offset` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HalfAt {
    pub base: usize,
    pub offset: usize,
}

const OP: &str = "AdamW";
/// The `format` metadata value of a saved AdamW state.
const FORMAT: &str = "nn.AdamW/1";

/// Name fragments whose parameters get no weight decay (the HF Trainer's rule: every bias and
/// every LayerNorm weight).
pub const DEFAULT_NO_DECAY: [&str; 2] = ["bias", "LayerNorm.weight"];

/// Which reference implementation's update rule to follow (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdamWVariant {
    /// transformers 4.17 `transformers.AdamW` (the reference pipeline's optimizer).
    #[default]
    Hf,
    /// `torch.optim.AdamW`.
    Torch,
}

impl AdamWVariant {
    pub fn name(self) -> &'static str {
        match self {
            AdamWVariant::Hf => "hf",
            AdamWVariant::Torch => "torch",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "hf" => Some(AdamWVariant::Hf),
            "torch" => Some(AdamWVariant::Torch),
            _ => None,
        }
    }
}

/// Hyper-parameters. Defaults are the HF `TrainingArguments` ones (lr 5e-5, betas (0.9, 0.999),
/// eps 1e-8, weight decay 0) with the HF variant and no-decay list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// The base learning rate (what a schedule scales); `AdamW::step` takes the current one.
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    /// Decoupled weight decay for every parameter not matched by `no_decay`.
    pub weight_decay: f64,
    pub variant: AdamWVariant,
    /// A parameter whose name contains any of these gets no weight decay.
    pub no_decay: Vec<String>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 5e-5,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            variant: AdamWVariant::Hf,
            no_decay: DEFAULT_NO_DECAY.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl AdamWConfig {
    /// True when `name` is in the no-decay group.
    pub fn no_decay(&self, name: &str) -> bool {
        self.no_decay.iter().any(|p| name.contains(p.as_str()))
    }

    /// The weight decay applied to parameter `name`.
    pub fn weight_decay_for(&self, name: &str) -> f64 {
        if self.no_decay(name) {
            0.0
        } else {
            self.weight_decay
        }
    }

    /// Rejects the values torch rejects (and non-finite ones).
    pub fn validate(&self) -> Result<()> {
        let (b1, b2) = self.betas;
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        if !ok(self.lr) {
            bail!(OP, "invalid learning rate {}", self.lr);
        }
        if !ok(self.eps) {
            bail!(OP, "invalid eps {}", self.eps);
        }
        if !ok(self.weight_decay) {
            bail!(OP, "invalid weight_decay {}", self.weight_decay);
        }
        if !(ok(b1) && b1 < 1.0 && ok(b2) && b2 < 1.0) {
            bail!(OP, "invalid betas ({b1}, {b2}): each must be in [0, 1)");
        }
        Ok(())
    }
}

/// One parameter handed to [`AdamW::step`]: its name (the key of its optimizer state and of the
/// weight-decay rule), its value (updated in place) and its gradient (same shape, f32, any layout).
pub struct ParamUpdate<'a> {
    pub name: &'a str,
    pub value: &'a mut Tensor,
    pub grad: &'a Tensor,
}

/// The optimizer state of one parameter. Equality compares the step count, the shape and the
/// moments' values (downloaded when on a GPU), whatever device they are on.
#[derive(Clone, Debug)]
pub struct ParamState {
    step: u64,
    shape: Vec<usize>,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

impl ParamState {
    fn zeros(shape: &[usize], device: Device) -> Result<Self> {
        Ok(ParamState {
            step: 0,
            shape: shape.to_vec(),
            exp_avg: Tensor::zeros(shape, DType::F32, device)?,
            exp_avg_sq: Tensor::zeros(shape, DType::F32, device)?,
        })
    }
    /// How many updates this parameter has had (the `t` of its bias correction).
    pub fn step(&self) -> u64 {
        self.step
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// First moment: f32, the parameter's shape, on the parameter's device.
    pub fn exp_avg(&self) -> &Tensor {
        &self.exp_avg
    }
    /// Second moment: f32, the parameter's shape, on the parameter's device.
    pub fn exp_avg_sq(&self) -> &Tensor {
        &self.exp_avg_sq
    }
    /// Where the moments are.
    pub fn device(&self) -> Device {
        self.exp_avg.device()
    }

    /// Moves the moments to `device` (nothing to do when they are there).
    fn move_to(&mut self, device: Device) -> Result<()> {
        if self.device() != device {
            self.exp_avg = self.exp_avg.to_device(device)?;
            self.exp_avg_sq = self.exp_avg_sq.to_device(device)?;
        }
        Ok(())
    }
}

impl PartialEq for ParamState {
    fn eq(&self, other: &Self) -> bool {
        let same = |a: &Tensor, b: &Tensor| match (a.to_vec::<f32>(), b.to_vec::<f32>()) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        };
        self.step == other.step
            && self.shape == other.shape
            && same(&self.exp_avg, &other.exp_avg)
            && same(&self.exp_avg_sq, &other.exp_avg_sq)
    }
}

/// Entry `i` of the device list of [`AdamW::step`]: each parameter's value, then its gradient.
fn device_entry_name(params: &[ParamUpdate<'_>], i: usize) -> String {
    let what = ["value", "gradient"][i % 2];
    format!("the {what} of parameter {:?}", params[i / 2].name)
}

/// A fresh host copy of `t` (the state dict never shares the optimizer's buffers).
fn host_copy(t: &Tensor) -> Result<Tensor> {
    if t.device() == Device::Cpu {
        t.copy()
    } else {
        t.to_device(Device::Cpu)
    }
}

/// A saved optimizer state: named tensors plus string metadata, i.e. the contents of a
/// safetensors file (see [`AdamW::state_dict`]).
#[derive(Clone, Debug)]
pub struct StateDict {
    pub tensors: Vec<(String, Tensor)>,
    pub metadata: BTreeMap<String, String>,
}

/// AdamW over named f32 parameters.
#[derive(Clone, Debug)]
pub struct AdamW {
    config: AdamWConfig,
    step_count: u64,
    state: BTreeMap<String, ParamState>,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        Ok(AdamW {
            config,
            step_count: 0,
            state: BTreeMap::new(),
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// How many times `step` has run.
    pub fn step_count(&self) -> u64 {
        self.step_count
    }

    /// The state of parameter `name`, once it has been updated.
    pub fn param_state(&self, name: &str) -> Option<&ParamState> {
        self.state.get(name)
    }

    /// Names with optimizer state, sorted.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.state.keys().map(|s| s.as_str())
    }

    /// One AdamW update of every parameter in `params` with learning rate `lr` (the schedule's
    /// current value). Everything is checked first (f32 dtypes, gradient and saved-state shapes,
    /// unique names, one device for every value and gradient): on an error, naming the parameter,
    /// nothing has been modified. A parameter left out of a call is not touched and its step count
    /// does not advance (as torch does for a parameter without a gradient).
    pub fn step(&mut self, lr: f64, params: &mut [ParamUpdate<'_>]) -> Result<()> {
        self.step_with_half_copies(lr, params, &mut []).map(|_| ())
    }

    /// [`AdamW::step`], also writing `halves[i]` (when given: an f16 or bf16 tensor shaped like
    /// parameter i, on its GPU) with the updated value rounded to that dtype, in the same kernel
    /// pass: the half copies autocast reads (`Param::half`). Returns whether they were written
    /// (on a GPU; the CPU step leaves them alone and returns false). `halves` is empty or has one
    /// entry per parameter.
    pub fn step_with_half_copies(
        &mut self,
        lr: f64,
        params: &mut [ParamUpdate<'_>],
        halves: &mut [Option<&mut Tensor>],
    ) -> Result<bool> {
        self.step_with_fused_half_copies(lr, params, halves, &[], &mut [])
    }

    /// [`AdamW::step_with_half_copies`] where parameter i's half copy may instead be the run
    /// `ats[i]` (offset, in elements) of the shared buffer `bases[ats[i].base]` (f16/bf16): the
    /// fused QKV weight, whose three copies lie one after another in one buffer
    /// (`nn::fused_half`). `ats` is empty or has one entry per parameter; an entry is used when
    /// `halves` has none. A buffer another tensor still reads is copied before it is written
    /// (copy-on-write), so read the written copies back from `bases`.
    pub fn step_with_fused_half_copies(
        &mut self,
        lr: f64,
        params: &mut [ParamUpdate<'_>],
        halves: &mut [Option<&mut Tensor>],
        ats: &[Option<HalfAt>],
        bases: &mut [Tensor],
    ) -> Result<bool> {
        let _phase = tensor::profiler::phase(tensor::profiler::Phase::Optimizer);
        for (what, len) in [
            ("half copies", halves.len()),
            ("fused half copies", ats.len()),
        ] {
            if len != 0 && len != params.len() {
                bail!(OP, "{len} {what} for {} parameters", params.len());
            }
        }
        for (u, at) in params.iter().zip(ats) {
            if let Some(at) = at {
                let fits = bases.get(at.base).is_some_and(|b| {
                    matches!(b.dtype(), DType::F16 | DType::BF16)
                        && at.offset + u.value.elem_count() <= b.elem_count()
                });
                if !fits {
                    bail!(
                        OP,
                        "parameter {:?}: its half copy at {:?} is not inside an f16/bf16 buffer",
                        u.name,
                        at
                    );
                }
            }
        }
        for (u, h) in params.iter().zip(halves.iter()) {
            if let Some(h) = h {
                if h.shape() != u.value.shape() || !matches!(h.dtype(), DType::F16 | DType::BF16) {
                    bail!(
                        OP,
                        "parameter {:?}: its half copy is {} {:?}, expected f16/bf16 {:?}",
                        u.name,
                        h.dtype(),
                        h.shape(),
                        u.value.shape()
                    );
                }
            }
        }
        if !(lr.is_finite() && lr >= 0.0) {
            bail!(OP, "learning rate must be finite and >= 0, got {lr}");
        }
        let mut seen = HashSet::new();
        for u in params.iter() {
            let name = u.name;
            if !seen.insert(name) {
                bail!(OP, "parameter {name:?} given twice in one step");
            }
            for (what, t) in [("value", &*u.value), ("gradient", u.grad)] {
                if t.dtype() != DType::F32 {
                    bail!(
                        OP,
                        "parameter {name:?}: {what} has dtype {}, expected f32",
                        t.dtype()
                    );
                }
            }
            if u.grad.shape() != u.value.shape() {
                bail!(
                    OP,
                    "parameter {name:?}: gradient shape {:?} does not match parameter shape {:?}",
                    u.grad.shape(),
                    u.value.shape()
                );
            }
            if let Some(st) = self.state.get(name) {
                if st.shape != u.value.shape() {
                    bail!(
                        OP,
                        "parameter {name:?}: shape {:?} does not match its optimizer state {:?}",
                        u.value.shape(),
                        st.shape
                    );
                }
            }
        }
        let device = one_device(
            OP,
            params
                .iter()
                .flat_map(|u| [u.value.device(), u.grad.device()]),
            |i| device_entry_name(params, i),
        )?;
        // The moments follow their parameter (moved once, when the state was loaded from a file
        // or the model moved since the last step).
        for u in params.iter() {
            if let Some(st) = self.state.get_mut(u.name) {
                st.move_to(device)?;
            }
        }
        if device == Device::Cpu {
            return self.step_cpu(lr, params).map(|()| false);
        }
        #[cfg(feature = "cuda")]
        {
            let wrote = !halves.is_empty() || !ats.is_empty();
            self.step_cuda(lr, params, (halves, ats, bases), device)
                .map(|()| wrote)
        }
        #[cfg(not(feature = "cuda"))]
        Err(super::without_cuda(OP, device))
    }

    /// [`AdamW::step`] on the CPU, after its checks: one fused rayon pass per parameter.
    fn step_cpu(&mut self, lr: f64, params: &mut [ParamUpdate<'_>]) -> Result<()> {
        for u in params.iter() {
            if !self.state.contains_key(u.name) {
                let st = ParamState::zeros(u.value.shape(), Device::Cpu)?;
                self.state.insert(u.name.to_string(), st);
            }
        }
        self.step_count += 1;
        for u in params.iter_mut() {
            let wd = self.config.weight_decay_for(u.name);
            let Some(st) = self.state.get_mut(u.name) else {
                bail!(OP, "parameter {:?} has no state", u.name);
            };
            st.step += 1;
            let c = Coefs::new(&self.config, lr, wd, st.step);
            let _p = adamw_scope(&[&*u.value, u.grad]);
            let g = f32_values(u.grad, OP, u.name)?;
            let p = f32_values_mut(u.value, OP, u.name)?;
            let m = st.exp_avg.data_mut::<f32>()?;
            let v = st.exp_avg_sq.data_mut::<f32>()?;
            let kernel = match self.config.variant {
                AdamWVariant::Hf => update_hf,
                AdamWVariant::Torch => update_torch,
            };
            fused(kernel, &c, p, m, v, &g);
        }
        Ok(())
    }

    /// [`AdamW::step`] on a GPU, after its checks: one multi-tensor launch with the scalars the
    /// CPU step would use. Step counts advance only once the launch was issued.
    #[cfg(feature = "cuda")]
    fn step_cuda(
        &mut self,
        lr: f64,
        params: &mut [ParamUpdate<'_>],
        (halves, ats, bases): (&mut [Option<&mut Tensor>], &[Option<HalfAt>], &mut [Tensor]),
        device: Device,
    ) -> Result<()> {
        use tensor::cuda::optim::{adamw_step_fused, AdamWTensors};
        for u in params.iter() {
            if !self.state.contains_key(u.name) {
                let st = ParamState::zeros(u.value.shape(), device)?;
                self.state.insert(u.name.to_string(), st);
            }
        }
        let (config, variant) = (&self.config, self.config.variant);
        let wanted: HashSet<&str> = params.iter().map(|u| u.name).collect();
        let mut states: std::collections::HashMap<&str, &mut ParamState> = self
            .state
            .iter_mut()
            .filter(|(name, _)| wanted.contains(name.as_str()))
            .map(|(name, st)| (name.as_str(), st))
            .collect();
        let mut steps = Vec::with_capacity(params.len());
        let mut entries = Vec::with_capacity(params.len());
        let mut halves = halves.iter_mut();
        for (i, u) in params.iter_mut().enumerate() {
            let half_copy = halves.next().and_then(|h| h.as_deref_mut());
            let half_at = ats
                .get(i)
                .copied()
                .flatten()
                .filter(|_| half_copy.is_none());
            let half_at = half_at.map(|a| tensor::cuda::optim::HalfAt {
                base: a.base,
                offset: a.offset,
            });
            let Some(st) = states.remove(u.name) else {
                bail!(OP, "parameter {:?} has no state", u.name);
            };
            let ParamState {
                step,
                exp_avg,
                exp_avg_sq,
                ..
            } = st;
            let c = Coefs::new(config, lr, config.weight_decay_for(u.name), *step + 1);
            entries.push(AdamWTensors {
                param: &mut *u.value,
                grad: u.grad,
                exp_avg,
                exp_avg_sq,
                half_copy,
                half_at,
                scalars: c.device_scalars(variant),
            });
            steps.push(step);
        }
        let _p = adamw_scope(
            &entries
                .iter()
                .flat_map(|e| [&*e.param, e.grad])
                .collect::<Vec<_>>(),
        );
        adamw_step_fused(&mut entries, bases)?;
        for step in steps {
            *step += 1;
        }
        self.step_count += 1;
        Ok(())
    }

    // ---- state dict -----------------------------------------------------------------------

    /// The whole state as host tensors (`<name>.exp_avg`, `<name>.exp_avg_sq` f32 in the
    /// parameter's shape, copied from the GPU when the moments live there, `<name>.step` i64
    /// scalar) and metadata strings (format, global step count and
    /// every hyper-parameter, floats written so they parse back exactly).
    pub fn state_dict(&self) -> Result<StateDict> {
        let mut tensors = Vec::with_capacity(3 * self.state.len());
        for (name, st) in &self.state {
            tensors.push((format!("{name}.exp_avg"), host_copy(&st.exp_avg)?));
            tensors.push((format!("{name}.exp_avg_sq"), host_copy(&st.exp_avg_sq)?));
            tensors.push((format!("{name}.step"), Tensor::scalar(st.step as i64)));
        }
        let c = &self.config;
        let no_decay = serde_json::to_string(&c.no_decay)
            .map_err(|e| tensor::Error::op(OP, format!("cannot encode no_decay: {e}")))?;
        let meta = [
            ("format", FORMAT.to_string()),
            ("step_count", self.step_count.to_string()),
            ("lr", c.lr.to_string()),
            ("beta1", c.betas.0.to_string()),
            ("beta2", c.betas.1.to_string()),
            ("eps", c.eps.to_string()),
            ("weight_decay", c.weight_decay.to_string()),
            ("variant", c.variant.name().to_string()),
            ("no_decay", no_decay),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(StateDict {
            tensors,
            metadata: meta,
        })
    }

    /// Replaces the whole state (moments, step counts and hyper-parameters, as torch's
    /// `load_state_dict` does) with one from [`AdamW::state_dict`]. Validated completely before
    /// anything changes; errors name the parameter or metadata key. The moments are kept on the
    /// host and move to their parameter's device at its next step (as torch casts a loaded state
    /// to its parameter's device).
    pub fn load_state_dict(&mut self, sd: &StateDict) -> Result<()> {
        let (tensors, meta) = (&sd.tensors, &sd.metadata);
        let get = |k: &str| -> Result<&str> {
            match meta.get(k) {
                Some(v) => Ok(v.as_str()),
                None => bail!(OP, "state dict: metadata key {k:?} is missing"),
            }
        };
        fn parse<T: std::str::FromStr>(k: &str, v: &str) -> Result<T> {
            match v.parse() {
                Ok(x) => Ok(x),
                Err(_) => bail!(OP, "state dict: metadata {k:?} = {v:?} does not parse"),
            }
        }
        let format = get("format")?;
        if format != FORMAT {
            bail!(OP, "state dict: format {format:?}, expected {FORMAT:?}");
        }
        let num = |k: &str| -> Result<f64> { parse(k, get(k)?) };
        let variant = get("variant")?;
        let config = AdamWConfig {
            lr: num("lr")?,
            betas: (num("beta1")?, num("beta2")?),
            eps: num("eps")?,
            weight_decay: num("weight_decay")?,
            variant: match AdamWVariant::from_name(variant) {
                Some(v) => v,
                None => bail!(OP, "state dict: unknown variant {variant:?}"),
            },
            no_decay: serde_json::from_str(get("no_decay")?)
                .map_err(|e| tensor::Error::op(OP, format!("state dict: no_decay: {e}")))?,
        };
        config.validate()?;
        let step_count: u64 = parse("step_count", get("step_count")?)?;

        // Gather the three entries of each parameter.
        type Parts<'a> = [Option<&'a Tensor>; 3];
        let mut parts: BTreeMap<&str, Parts> = BTreeMap::new();
        for (tname, t) in tensors {
            let (param, slot) = if let Some(p) = tname.strip_suffix(".exp_avg_sq") {
                (p, 1)
            } else if let Some(p) = tname.strip_suffix(".exp_avg") {
                (p, 0)
            } else if let Some(p) = tname.strip_suffix(".step") {
                (p, 2)
            } else {
                bail!(OP, "state dict: unexpected tensor {tname:?}");
            };
            parts.entry(param).or_default()[slot] = Some(t);
        }
        let mut state = BTreeMap::new();
        for (param, [m, v, s]) in parts {
            let (Some(m), Some(v), Some(s)) = (m, v, s) else {
                bail!(
                    OP,
                    "state dict: parameter {param:?} lacks one of exp_avg, exp_avg_sq, step"
                );
            };
            if m.shape() != v.shape() {
                bail!(
                    OP,
                    "state dict: parameter {param:?}: exp_avg shape {:?} does not match exp_avg_sq shape {:?}",
                    m.shape(),
                    v.shape()
                );
            }
            if m.dtype() != DType::F32 || v.dtype() != DType::F32 {
                bail!(OP, "state dict: parameter {param:?}: moments must be f32");
            }
            if s.dtype() != DType::I64 || s.elem_count() != 1 {
                bail!(
                    OP,
                    "state dict: parameter {param:?}: step must be one i64, got {:?} {}",
                    s.shape(),
                    s.dtype()
                );
            }
            let step = s.to_vec::<i64>()?[0];
            if step < 0 {
                bail!(OP, "state dict: parameter {param:?}: negative step {step}");
            }
            state.insert(
                param.to_string(),
                ParamState {
                    step: step as u64,
                    shape: m.shape().to_vec(),
                    exp_avg: host_copy(m)?,
                    exp_avg_sq: host_copy(v)?,
                },
            );
        }
        *self = AdamW {
            config,
            step_count,
            state,
        };
        Ok(())
    }

    /// Writes [`AdamW::state_dict`] to a safetensors file (atomically).
    pub fn save_state(&self, path: impl AsRef<Path>) -> Result<()> {
        let sd = self.state_dict()?;
        let refs: Vec<(&str, &Tensor)> = sd.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        save(path, &refs, Some(&sd.metadata))
    }

    /// Reads a file written by [`AdamW::save_state`] into this optimizer.
    pub fn load_state(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let file = SafeTensors::open(path)?;
        self.load_state_dict(&StateDict {
            tensors: file.tensors()?,
            metadata: file.metadata().clone(),
        })
    }

    /// A new optimizer with the state (and hyper-parameters) saved in `path`.
    pub fn from_state(path: impl AsRef<Path>) -> Result<Self> {
        let mut opt = AdamW::new(AdamWConfig::default())?;
        opt.load_state(path)?;
        Ok(opt)
    }
}

// ---- the fused update --------------------------------------------------------------------

/// The scalars of one parameter's update, computed in f64 as the Python reference does and
/// rounded once to f32 (as torch does when a Python float scales an f32 tensor).
struct Coefs {
    b1: f32,
    one_minus_b1: f32,
    b2: f32,
    one_minus_b2: f32,
    eps: f32,
    /// `-lr / bc1` (torch) or `-lr * sqrt(bc2) / bc1` (HF).
    neg_step: f32,
    /// torch: `sqrt(bc2)`, the denominator's bias correction.
    bc2_sqrt: f32,
    /// torch: `1 - lr*wd`, applied before the update (1 when there is no decay).
    keep: f32,
    /// HF: `-lr*wd`, applied after the update when `wd > 0`.
    neg_lr_wd: f32,
    hf_decay: bool,
}

impl Coefs {
    fn new(c: &AdamWConfig, lr: f64, wd: f64, step: u64) -> Self {
        let (b1, b2) = c.betas;
        let t = step as f64;
        let bc1 = 1.0 - b1.powf(t);
        let bc2 = 1.0 - b2.powf(t);
        let neg_step = match c.variant {
            AdamWVariant::Hf => -(lr * bc2.sqrt() / bc1),
            AdamWVariant::Torch => -(lr / bc1),
        };
        Coefs {
            b1: b1 as f32,
            one_minus_b1: (1.0 - b1) as f32,
            b2: b2 as f32,
            one_minus_b2: (1.0 - b2) as f32,
            eps: c.eps as f32,
            neg_step: neg_step as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            keep: (1.0 - lr * wd) as f32,
            neg_lr_wd: (-lr * wd) as f32,
            hf_decay: wd > 0.0,
        }
    }

    /// The same scalars for the GPU kernel (`cuda/kernels/adamw.cu`), so both devices compute
    /// with identical f32 values.
    #[cfg(feature = "cuda")]
    fn device_scalars(&self, variant: AdamWVariant) -> tensor::cuda::optim::AdamWScalars {
        use tensor::cuda::optim::{AdamWScalars, AdamWVariant as Kernel};
        AdamWScalars {
            variant: match variant {
                AdamWVariant::Hf => Kernel::Hf,
                AdamWVariant::Torch => Kernel::Torch,
            },
            b1: self.b1,
            one_minus_b1: self.one_minus_b1,
            b2: self.b2,
            one_minus_b2: self.one_minus_b2,
            eps: self.eps,
            neg_step: self.neg_step,
            bc2_sqrt: self.bc2_sqrt,
            keep: self.keep,
            neg_lr_wd: self.neg_lr_wd,
            decay: self.hf_decay,
        }
    }
}

type Kernel = fn(&Coefs, &mut [f32], &mut [f32], &mut [f32], &[f32]);

/// The profiler's record of one AdamW update over `params_and_grads` (parameter, gradient,
/// ...): per element it reads p, g, m, v and writes p, m, v (the moments are f32), about 12
/// FLOPs. On a GPU, `io` starts the CUDA events around the launch.
fn adamw_scope(params_and_grads: &[&Tensor]) -> tensor::profiler::Scope {
    let n: usize = params_and_grads
        .iter()
        .step_by(2)
        .map(|t| t.elem_count())
        .sum();
    tensor::profiler::scope("adamw")
        // Reads the operands, writes the parameters ([n] in the first parameter's dtype).
        .io(params_and_grads, &[n])
        .extra_bytes(4 * 4 * n as u64) // m and v, read and written
        .flops(12 * n as u64)
}

/// Runs `kernel` over matching chunks of p, m, v and g (in parallel for large parameters; every
/// element is independent, so the result does not depend on the split).
fn fused(kernel: Kernel, c: &Coefs, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
    if p.len() > PAR_THRESHOLD {
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| kernel(c, p, m, v, g));
    } else {
        kernel(c, p, m, v, g);
    }
}

/// transformers 4.17 AdamW, torch's f32 operation order: `m.mul_(b1).add_(g, alpha=1-b1)`,
/// `v.mul_(b2).addcmul_(g, g, value=1-b2)`, `p.addcdiv_(m, sqrt(v)+eps, value=-step)`, then
/// `p.add_(p, alpha=-lr*wd)`.
fn update_hf(c: &Coefs, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
    for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
        let mm = *m * c.b1 + c.one_minus_b1 * g;
        let vv = *v * c.b2 + c.one_minus_b2 * g * g;
        let denom = vv.sqrt() + c.eps;
        let mut pp = *p + c.neg_step * mm / denom;
        if c.hf_decay {
            pp = pp + c.neg_lr_wd * pp;
        }
        *m = mm;
        *v = vv;
        *p = pp;
    }
}

/// torch.optim.AdamW (single-tensor path), its f32 operation order: `p.mul_(1-lr*wd)`,
/// `m.lerp_(g, 1-b1)`, `v.mul_(b2).addcmul_(g, g, value=1-b2)`,
/// `p.addcdiv_(m, sqrt(v)/sqrt(bc2)+eps, value=-lr/bc1)`.
fn update_torch(c: &Coefs, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
    for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
        let pp = *p * c.keep;
        let mm = *m + c.one_minus_b1 * (g - *m);
        let vv = *v * c.b2 + c.one_minus_b2 * g * g;
        let denom = vv.sqrt() / c.bc2_sqrt + c.eps;
        *p = pp + c.neg_step * mm / denom;
        *m = mm;
        *v = vv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        tensor::testing::randn(shape, 1.0, DType::F32, seed)
    }

    fn config(variant: AdamWVariant, wd: f64) -> AdamWConfig {
        AdamWConfig {
            lr: 1e-3,
            weight_decay: wd,
            variant,
            ..AdamWConfig::default()
        }
    }

    /// The update in f64, straight from the formulas in the module docs.
    fn reference(
        variant: AdamWVariant,
        lr: f64,
        wd: f64,
        p: &[f64],
        grads: &[Vec<f64>],
    ) -> Vec<f64> {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let mut p = p.to_vec();
        let mut m = vec![0.0; p.len()];
        let mut v = vec![0.0; p.len()];
        for (t, g) in grads.iter().enumerate() {
            let t = (t + 1) as i32;
            let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            for i in 0..p.len() {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                match variant {
                    AdamWVariant::Torch => {
                        p[i] *= 1.0 - lr * wd;
                        p[i] -= lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + eps);
                    }
                    AdamWVariant::Hf => {
                        p[i] -= lr * bc2.sqrt() / bc1 * m[i] / (v[i].sqrt() + eps);
                        p[i] -= lr * wd * p[i];
                    }
                }
            }
        }
        p
    }

    fn max_rel(a: &[f32], b: &[f64]) -> f64 {
        let scale = b.iter().fold(0f64, |s, x| s.max(x.abs()));
        let err = a
            .iter()
            .zip(b)
            .fold(0f64, |e, (x, y)| e.max((*x as f64 - y).abs()));
        err / scale
    }

    #[test]
    fn no_decay_rule_follows_hf_trainer() {
        let c = AdamWConfig {
            weight_decay: 0.01,
            ..AdamWConfig::default()
        };
        for name in [
            "bert.embeddings.LayerNorm.weight",
            "bert.encoder.layer.3.output.LayerNorm.bias",
            "cls.predictions.bias",
            "bert.encoder.layer.0.attention.self.query.bias",
        ] {
            assert!(c.no_decay(name), "{name}");
            assert_eq!(c.weight_decay_for(name), 0.0);
        }
        for name in [
            "bert.encoder.layer.0.attention.self.query.weight",
            "bert.embeddings.word_embeddings.weight",
        ] {
            assert!(!c.no_decay(name), "{name}");
            assert_eq!(c.weight_decay_for(name), 0.01);
        }
        let custom = AdamWConfig {
            no_decay: vec!["embeddings".into()],
            ..c
        };
        assert!(custom.no_decay("bert.embeddings.word_embeddings.weight"));
        assert!(!custom.no_decay("cls.predictions.bias"));
    }

    #[test]
    fn matches_f64_reference_small_and_parallel_sizes() {
        // 7 elements (serial) and 70_001 (rayon chunks, ragged tail), three steps each.
        for variant in [AdamWVariant::Hf, AdamWVariant::Torch] {
            for n in [7usize, 70_001] {
                let p0 = randn(&[n], 1);
                let grads: Vec<Tensor> = (0..3).map(|k| randn(&[n], 10 + k)).collect();
                let mut p = p0.clone();
                let mut opt = AdamW::new(config(variant, 0.1)).unwrap();
                for g in &grads {
                    let mut ups = [ParamUpdate {
                        name: "w",
                        value: &mut p,
                        grad: g,
                    }];
                    opt.step(0.01, &mut ups).unwrap();
                }
                let want = reference(
                    variant,
                    0.01,
                    0.1,
                    &p0.to_vec_f64().unwrap(),
                    &grads
                        .iter()
                        .map(|g| g.to_vec_f64().unwrap())
                        .collect::<Vec<_>>(),
                );
                let err = max_rel(&p.to_vec::<f32>().unwrap(), &want);
                assert!(err < 1e-6, "{variant:?} n={n}: relative error {err:e}");
                assert_eq!(opt.param_state("w").unwrap().step(), 3);
                assert_eq!(opt.step_count(), 3);
                // The original tensor is untouched (copy-on-write).
                assert_ne!(p.to_vec::<f32>().unwrap(), p0.to_vec::<f32>().unwrap());
            }
        }
    }

    #[test]
    fn variants_differ_and_no_decay_group_is_undecayed() {
        // With zero gradients the only change is weight decay: decayed names shrink by exactly
        // (1 - lr*wd), no-decay names do not move.
        let mut w = Tensor::from_vec(vec![1.0f32, -2.0], &[2]).unwrap();
        let mut b = w.clone();
        let zero = Tensor::zeros(&[2], DType::F32, Device::Cpu).unwrap();
        let mut opt = AdamW::new(config(AdamWVariant::Torch, 0.5)).unwrap();
        opt.step(
            0.1,
            &mut [
                ParamUpdate {
                    name: "dense.weight",
                    value: &mut w,
                    grad: &zero,
                },
                ParamUpdate {
                    name: "dense.bias",
                    value: &mut b,
                    grad: &zero,
                },
            ],
        )
        .unwrap();
        assert_eq!(w.to_vec::<f32>().unwrap(), vec![0.95, -1.9]);
        assert_eq!(b.to_vec::<f32>().unwrap(), vec![1.0, -2.0]);

        // Same inputs, the two variants give different results (eps placement, decay order).
        let g = Tensor::from_vec(vec![1e-7f32, 3.0], &[2]).unwrap();
        let run = |variant| {
            let mut p = Tensor::from_vec(vec![1.0f32, -2.0], &[2]).unwrap();
            let mut opt = AdamW::new(config(variant, 0.5)).unwrap();
            opt.step(
                0.1,
                &mut [ParamUpdate {
                    name: "w",
                    value: &mut p,
                    grad: &g,
                }],
            )
            .unwrap();
            p.to_vec::<f32>().unwrap()
        };
        let (hf, torch) = (run(AdamWVariant::Hf), run(AdamWVariant::Torch));
        assert!((hf[0] - torch[0]).abs() > 1e-3, "{hf:?} {torch:?}");
    }

    #[test]
    fn non_contiguous_gradient() {
        let g = randn(&[3, 4], 5);
        let gt = g.t().unwrap(); // [4, 3], strided
        let gc = gt.copy().unwrap();
        let p0 = randn(&[4, 3], 6);
        let run = |grad: &Tensor| {
            let mut p = p0.clone();
            let mut opt = AdamW::new(config(AdamWVariant::Hf, 0.01)).unwrap();
            opt.step(
                1e-2,
                &mut [ParamUpdate {
                    name: "w",
                    value: &mut p,
                    grad,
                }],
            )
            .unwrap();
            p.to_vec::<f32>().unwrap()
        };
        assert_eq!(run(&gt), run(&gc));
    }

    #[test]
    fn errors_name_the_parameter_and_change_nothing() {
        let mut opt = AdamW::new(config(AdamWVariant::Hf, 0.01)).unwrap();
        let mut a = randn(&[2, 3], 1);
        let mut b = randn(&[4], 2);
        let a0 = a.to_vec::<f32>().unwrap();
        let ga = randn(&[2, 3], 3);
        let bad = randn(&[5], 4);
        let err = opt
            .step(
                1e-3,
                &mut [
                    ParamUpdate {
                        name: "enc.a.weight",
                        value: &mut a,
                        grad: &ga,
                    },
                    ParamUpdate {
                        name: "enc.b.bias",
                        value: &mut b,
                        grad: &bad,
                    },
                ],
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"enc.b.bias\"") && err.contains("[5]"),
            "{err}"
        );
        assert!(err.starts_with("AdamW"), "{err}");
        assert_eq!(a.to_vec::<f32>().unwrap(), a0, "a must be untouched");
        assert_eq!(opt.step_count(), 0);
        assert!(opt.param_state("enc.a.weight").is_none());

        // State created for one shape, then the parameter comes back with another.
        let g4 = randn(&[4], 5);
        opt.step(
            1e-3,
            &mut [ParamUpdate {
                name: "enc.b.bias",
                value: &mut b,
                grad: &g4,
            }],
        )
        .unwrap();
        let mut b2 = randn(&[2, 2], 6);
        let g22 = randn(&[2, 2], 7);
        let err = opt
            .step(
                1e-3,
                &mut [ParamUpdate {
                    name: "enc.b.bias",
                    value: &mut b2,
                    grad: &g22,
                }],
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"enc.b.bias\"") && err.contains("optimizer state"),
            "{err}"
        );

        // Wrong dtype, duplicate names, bad lr, bad config.
        let mut h = Tensor::zeros(&[4], DType::F64, Device::Cpu).unwrap();
        let err = opt
            .step(
                1e-3,
                &mut [ParamUpdate {
                    name: "x.f64",
                    value: &mut h,
                    grad: &g4,
                }],
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"x.f64\"") && err.contains("f64"), "{err}");
        let mut c = b.clone();
        let err = opt
            .step(
                1e-3,
                &mut [
                    ParamUpdate {
                        name: "dup",
                        value: &mut b,
                        grad: &g4,
                    },
                    ParamUpdate {
                        name: "dup",
                        value: &mut c,
                        grad: &g4,
                    },
                ],
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"dup\" given twice"), "{err}");
        assert!(opt.step(f64::NAN, &mut []).is_err());
        assert!(opt.step(-1.0, &mut []).is_err());
        for bad in [
            AdamWConfig {
                betas: (1.0, 0.999),
                ..AdamWConfig::default()
            },
            AdamWConfig {
                eps: -1.0,
                ..AdamWConfig::default()
            },
            AdamWConfig {
                weight_decay: f64::INFINITY,
                ..AdamWConfig::default()
            },
        ] {
            assert!(AdamW::new(bad).is_err());
        }
    }

    #[test]
    fn state_dict_and_clones_do_not_share_the_moments() {
        let mut opt = AdamW::new(config(AdamWVariant::Hf, 0.01)).unwrap();
        let mut p = randn(&[40_000], 1);
        let g = randn(&[40_000], 2);
        let step = |opt: &mut AdamW, p: &mut Tensor| {
            opt.step(
                1e-3,
                &mut [ParamUpdate {
                    name: "w",
                    value: p,
                    grad: &g,
                }],
            )
            .unwrap()
        };
        step(&mut opt, &mut p);
        let st = opt.param_state("w").unwrap();
        assert_eq!(st.device(), Device::Cpu);
        assert_eq!(
            (st.exp_avg().shape(), st.exp_avg().dtype()),
            (&[40_000][..], DType::F32)
        );
        let sd = opt.state_dict().unwrap();
        assert!(!sd.tensors[0].1.same_storage(st.exp_avg()));
        let saved: Vec<Vec<f32>> = sd.tensors[..2]
            .iter()
            .map(|(_, t)| t.to_vec::<f32>().unwrap())
            .collect();
        let snapshot = opt.clone();
        let p_before = p.to_vec::<f32>().unwrap();
        step(&mut opt, &mut p);
        // The saved tensors and the clone keep the values of step 1 (copy-on-write).
        for (k, (_, t)) in sd.tensors[..2].iter().enumerate() {
            assert_eq!(t.to_vec::<f32>().unwrap(), saved[k]);
        }
        assert_eq!(snapshot.param_state("w").unwrap().step(), 1);
        assert_ne!(snapshot.param_state("w"), opt.param_state("w"));
        // Stepping the clone from the same weights reproduces the second step.
        let mut again = snapshot.clone();
        let mut p2 = Tensor::from_vec(p_before, &[40_000]).unwrap();
        step(&mut again, &mut p2);
        assert_eq!(again.param_state("w"), opt.param_state("w"));
        assert_eq!(p2.to_vec::<f32>().unwrap(), p.to_vec::<f32>().unwrap());
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn mixed_devices_are_refused_naming_the_parameter() {
        // The device check only compares devices, so no GPU is needed to exercise it.
        let (mut a, mut b) = (randn(&[2], 1), randn(&[2], 2));
        let g = randn(&[2], 3);
        let ups = [
            ParamUpdate {
                name: "enc.a.weight",
                value: &mut a,
                grad: &g,
            },
            ParamUpdate {
                name: "enc.b.bias",
                value: &mut b,
                grad: &g,
            },
        ];
        let cuda = Device::Cuda(0);
        let err = one_device(OP, [Device::Cpu, Device::Cpu, Device::Cpu, cuda], |i| {
            device_entry_name(&ups, i)
        })
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "AdamW: the gradient of parameter \"enc.b.bias\" is on cuda:0 but the value of \
             parameter \"enc.a.weight\" is on cpu: every tensor of the step must be on one device"
        );
        let err = one_device(OP, [cuda, Device::Cpu], |i| device_entry_name(&ups, i))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the gradient of parameter \"enc.a.weight\" is on cpu"),
            "{err}"
        );
    }

    #[test]
    fn state_dict_round_trip_is_exact() {
        let mut opt = AdamW::new(AdamWConfig {
            lr: 1.0 / 3.0,
            weight_decay: 0.01,
            variant: AdamWVariant::Torch,
            no_decay: vec!["bias".into(), "norm \"x\"".into()],
            ..AdamWConfig::default()
        })
        .unwrap();
        let mut p = randn(&[3, 2], 1);
        let g = randn(&[3, 2], 2);
        for _ in 0..2 {
            opt.step(
                0.1,
                &mut [ParamUpdate {
                    name: "a.weight",
                    value: &mut p,
                    grad: &g,
                }],
            )
            .unwrap();
        }
        let sd = opt.state_dict().unwrap();
        let mut back = AdamW::new(AdamWConfig::default()).unwrap();
        back.load_state_dict(&sd).unwrap();
        assert_eq!(back.config(), opt.config());
        assert_eq!(back.step_count(), 2);
        assert_eq!(back.param_state("a.weight"), opt.param_state("a.weight"));

        // Missing pieces and bad metadata are reported with the parameter / key.
        let mut partial = sd.clone();
        partial.tensors.retain(|(n, _)| !n.ends_with(".exp_avg_sq"));
        let err = back.load_state_dict(&partial).unwrap_err().to_string();
        assert!(err.contains("\"a.weight\""), "{err}");
        let mut m2 = sd.clone();
        m2.metadata.remove("beta2");
        let err = back.load_state_dict(&m2).unwrap_err().to_string();
        assert!(err.contains("\"beta2\""), "{err}");
        // A failed load leaves the optimizer as it was.
        assert_eq!(back.param_state("a.weight"), opt.param_state("a.weight"));
    }
}
