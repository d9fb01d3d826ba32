//! Behaviour of the model beyond the HF fixture: padding does not change the real tokens'
//! outputs, defaults for absent inputs, dropout follows the context, and bad inputs are errors.

mod common;

use autograd::no_grad;
use bert::{extended_attention_mask, BertConfig, BertForMaskedLM, BertModel};
use common::{fixtures, rel_err, same_values};
use nn::Ctx;
use tensor::{DType, Device, Rng, Tensor};

fn config() -> BertConfig {
    BertConfig::from_file(fixtures().join("tiny/config.json")).unwrap()
}

fn ids(v: &[i64]) -> Tensor {
    Tensor::from_vec(v.to_vec(), &[1, v.len()]).unwrap()
}

#[test]
fn padding_does_not_change_real_tokens() {
    let model = BertModel::new(&config(), true, &mut Rng::new(5)).unwrap();
    let short = ids(&[2, 30, 31, 32, 3]);
    let padded = ids(&[2, 30, 31, 32, 3, 0, 0, 0]);
    let mask = ids(&[1, 1, 1, 1, 1, 0, 0, 0]);
    let (a, b) = no_grad(|| {
        let a = model.forward(&short, None, None, &mut Ctx::eval()).unwrap();
        let b = model
            .forward(&padded, Some(&mask), None, &mut Ctx::eval())
            .unwrap();
        (a, b)
    });
    let real = b.last_hidden_state.value().narrow(1, 0, 5).unwrap();
    assert!(rel_err(&real, a.last_hidden_state.value()) < 1e-6);
    let (pa, pb) = (a.pooler_output.unwrap(), b.pooler_output.unwrap());
    assert_eq!(pa.shape(), [1, 64]);
    assert!(rel_err(pb.value(), pa.value()) < 1e-6);
    // Without the mask the padding is attended to and the outputs change.
    let c = no_grad(|| model.forward(&padded, None, None, &mut Ctx::eval())).unwrap();
    let real_c = c.last_hidden_state.value().narrow(1, 0, 5).unwrap();
    assert!(rel_err(&real_c, a.last_hidden_state.value()) > 1e-4);
}

#[test]
fn absent_token_types_are_segment_zero() {
    let model = BertModel::new(&config(), false, &mut Rng::new(6)).unwrap();
    let x = ids(&[2, 40, 41, 3]);
    let zeros = Tensor::zeros(&[1, 4], DType::I64, Device::Cpu).unwrap();
    let ones = Tensor::ones(&[1, 4], DType::I64, Device::Cpu).unwrap();
    let run = |tt: Option<&Tensor>| {
        no_grad(|| model.forward(&x, None, tt, &mut Ctx::eval()))
            .unwrap()
            .last_hidden_state
            .value()
            .clone()
    };
    assert!(rel_err(&run(None), &run(Some(&zeros))) < 1e-6);
    assert!(rel_err(&run(Some(&ones)), &run(None)) > 1e-4);
}

#[test]
fn additive_mask_values() {
    let m = Tensor::from_vec(vec![1i64, 1, 0, 1, 0, 0], &[2, 3]).unwrap();
    let a = extended_attention_mask(&m, DType::F32).unwrap();
    assert_eq!(a.shape(), [2, 1, 1, 3]);
    assert_eq!(
        a.to_vec::<f32>().unwrap(),
        [0.0, 0.0, f32::MIN, 0.0, f32::MIN, f32::MIN]
    );
    let h = extended_attention_mask(&m.to_dtype(DType::F32).unwrap(), DType::F16).unwrap();
    assert_eq!(
        h.to_vec_f64().unwrap(),
        [0.0, 0.0, -65504.0, 0.0, -65504.0, -65504.0]
    );
    assert!(extended_attention_mask(&m, DType::I64).is_err());
    assert!(extended_attention_mask(&m.reshape(&[6]).unwrap(), DType::F32).is_err());
}

#[test]
fn dropout_follows_the_context() {
    let mut c = config();
    c.hidden_dropout_prob = 0.1;
    c.attention_probs_dropout_prob = 0.1;
    let model = BertForMaskedLM::new(&c, &mut Rng::new(8)).unwrap();
    let x = ids(&[2, 50, 4, 52, 3]);
    let labels = ids(&[-100, -100, 51, -100, -100]);
    let loss = |ctx: &mut Ctx| {
        model
            .forward(&x, None, None, &labels, ctx)
            .unwrap()
            .loss
            .value()
            .clone()
    };
    let eval = loss(&mut Ctx::eval());
    assert!(same_values(&eval, &loss(&mut Ctx::eval())));
    let t1 = loss(&mut Ctx::train(1));
    assert!(
        same_values(&t1, &loss(&mut Ctx::train(1))),
        "same seed, same masks"
    );
    assert!(!same_values(&t1, &eval));
    assert!(!same_values(&t1, &loss(&mut Ctx::train(2))));
}

#[test]
fn mlm_head_only_at_labelled_positions() {
    let model = BertForMaskedLM::new(&config(), &mut Rng::new(9)).unwrap();
    let x = Tensor::from_vec(vec![2i64, 60, 4, 3, 2, 4, 61, 3], &[2, 4]).unwrap();
    let labels =
        Tensor::from_vec(vec![-100i64, -100, 70, -100, -100, 71, -100, -100], &[2, 4]).unwrap();
    let out = model
        .forward(&x, None, None, &labels, &mut Ctx::eval())
        .unwrap();
    assert_eq!(out.positions, [2, 5]);
    assert_eq!(out.logits.shape(), [2, 128]);
    // Same as the full logits at those positions, and the loss is their mean cross-entropy.
    let full = model.logits(&x, None, None, &mut Ctx::eval()).unwrap();
    let full = full
        .value()
        .reshape(&[8, 128])
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let got = out.logits.value().to_vec::<f32>().unwrap();
    let mut want_loss = 0.0;
    for (r, (&pos, &target)) in [2usize, 5].iter().zip(&[70usize, 71]).enumerate() {
        let row = &full[pos * 128..(pos + 1) * 128];
        let gr = &got[r * 128..(r + 1) * 128];
        assert!(row.iter().zip(gr).all(|(a, b)| (a - b).abs() < 1e-5));
        let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        want_loss += (lse - row[target] as f64) / 2.0;
    }
    let loss = out.loss.value().to_vec_f64().unwrap()[0];
    assert!(
        (loss - want_loss).abs() < 1e-5 * want_loss,
        "{loss} vs {want_loss}"
    );

    // No labelled position: loss 0 with zero gradients (HF would give NaN).
    let none = Tensor::full(-100.0, &[2, 4], DType::I64, Device::Cpu).unwrap();
    let out = model
        .forward(&x, None, None, &none, &mut Ctx::eval())
        .unwrap();
    assert_eq!(out.loss.value().to_vec_f64().unwrap(), [0.0]);
    assert_eq!(out.logits.shape(), [0, 128]);
    assert!(out.positions.is_empty());
    let grads = out.loss.backward().unwrap();
    let g = grads.get(&model.cls.predictions.bias.var());
    assert!(g.is_none_or(|g| g.to_vec_f64().unwrap().iter().all(|&v| v == 0.0)));
}

#[test]
fn bad_inputs_are_errors() {
    let model = BertForMaskedLM::new(&config(), &mut Rng::new(10)).unwrap();
    let mut ctx = Ctx::eval();
    let x = ids(&[2, 60, 3]);
    let err = |r: tensor::Result<bert::MaskedLmOutput>| match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    };
    // Label outside the vocabulary, wrong label shape, wrong id dtype, too long a sequence.
    let e = err(model.forward(&x, None, None, &ids(&[-100, 500, -100]), &mut ctx));
    assert!(e.contains("label 500"), "{e}");
    let e = err(model.forward(&x, None, None, &ids(&[-100, 5]), &mut ctx));
    assert!(e.contains("labels"), "{e}");
    let xf = x.to_dtype(DType::F32).unwrap();
    let e = err(model.forward(&xf, None, None, &ids(&[-100, 5, -100]), &mut ctx));
    assert!(e.contains("input_ids"), "{e}");
    let long = Tensor::full(5.0, &[1, 65], DType::I64, Device::Cpu).unwrap();
    let e = err(model.forward(
        &long,
        None,
        None,
        &Tensor::full(-100.0, &[1, 65], DType::I64, Device::Cpu).unwrap(),
        &mut ctx,
    ));
    assert!(e.contains("max_position_embeddings"), "{e}");
    let e = err(model.forward(
        &x,
        Some(&ids(&[1, 1])),
        None,
        &ids(&[-100, 5, -100]),
        &mut ctx,
    ));
    assert!(e.contains("attention_mask"), "{e}");
    let e = err(model.forward(
        &x,
        None,
        Some(&ids(&[0, 1])),
        &ids(&[-100, 5, -100]),
        &mut ctx,
    ));
    assert!(e.contains("token_type_ids"), "{e}");
    // An id outside the vocabulary is an error from the embedding lookup, not a panic.
    assert!(model
        .forward(
            &ids(&[2, 999, 3]),
            None,
            None,
            &ids(&[-100, 5, -100]),
            &mut ctx
        )
        .is_err());
}
