//! The burn ResNets against PyTorch: torchvision's networks at width 4 with random weights and
//! batch-norm statistics (`tests/eval/make_resnet_fixture.py`), loaded from `.pth` (plain and
//! wrapped in `state_dict`/`module.`) and `.safetensors`, give PyTorch's features within 1e-4;
//! broken files are typed errors that name what is wrong.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use genie::backbone::{load_resnet, BackboneError, ResNetConfig, ResNetDepth};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/eval")
        .join(name)
}

/// A tensor of `resnet_io.safetensors` as values and shape.
fn io_tensor(name: &str) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(fixture("resnet_io.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = file.tensor(name).unwrap();
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (values, view.shape().to_vec())
}

fn narrow(depth: ResNetDepth) -> ResNetConfig {
    ResNetConfig { depth, width: 4 }
}

fn check_features(depth: ResNetDepth, file: &str) {
    let device = Device::flex();
    let model = load_resnet(&fixture(file), narrow(depth), &device).unwrap();
    let (input, shape) = io_tensor("input");
    let input = Tensor::<4>::from_data(TensorData::new(input, shape), &device);
    let ours = model
        .features(input)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    let (theirs, shape) = io_tensor(depth.name());
    assert_eq!(shape, vec![2, narrow(depth).feature_dim()]);
    assert_eq!(ours.len(), theirs.len());
    let worst = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = theirs.iter().map(|v| v.abs()).fold(0f32, f32::max);
    assert!(
        scale > 0.1,
        "{depth}: the reference features are degenerate"
    );
    assert!(
        worst < 1e-4,
        "{depth}: max |burn - torch| = {worst}, largest feature {scale}"
    );
}

#[test]
fn resnet18_from_a_plain_pth_matches_pytorch() {
    check_features(ResNetDepth::R18, "resnet18_w4.pth");
}

#[test]
fn resnet34_from_a_wrapped_data_parallel_checkpoint_matches_pytorch() {
    check_features(ResNetDepth::R34, "resnet34_w4_wrapped.pth");
}

#[test]
fn resnet50_from_safetensors_matches_pytorch() {
    check_features(ResNetDepth::R50, "resnet50_w4.safetensors");
}

#[test]
fn full_width_networks_have_torchvisions_parameter_counts() {
    // Elements of torchvision's state dict without the `fc` head and `num_batches_tracked`
    // (burn counts batch norm's running statistics as parameters; torchvision's parameters
    // alone are 11 176 512, 21 284 672 and 23 508 032).
    let device = Device::flex();
    for (depth, params) in [
        (ResNetDepth::R18, 11_186_112),
        (ResNetDepth::R34, 21_301_696),
        (ResNetDepth::R50, 23_561_152),
    ] {
        let model = ResNetConfig::torchvision(depth).init(&device);
        assert_eq!(model.num_params(), params, "{depth}");
    }
}

#[test]
fn a_checkpoint_of_another_depth_names_the_missing_tensors() {
    let err = load_resnet(
        &fixture("resnet18_w4.pth"),
        narrow(ResNetDepth::R34),
        &Device::flex(),
    )
    .unwrap_err();
    let BackboneError::Missing { missing, .. } = &err else {
        panic!("expected Missing, got {err}");
    };
    // ResNet-34 has a third block in layer1 that ResNet-18 lacks.
    assert!(
        missing.iter().any(|m| m == "layer1.2.conv1.weight"),
        "{missing:?}"
    );
    assert!(err.to_string().contains("layer1.2"), "{err}");
}

#[test]
fn a_checkpoint_of_another_width_names_the_misshapen_tensors() {
    let config = ResNetConfig {
        depth: ResNetDepth::R18,
        width: 8,
    };
    let err = load_resnet(&fixture("resnet18_w4.pth"), config, &Device::flex()).unwrap_err();
    let BackboneError::Misshapen { misshapen, .. } = &err else {
        panic!("expected Misshapen, got {err}");
    };
    assert!(
        misshapen
            .iter()
            .any(|m| m.starts_with("conv1.weight: expected [8, 3, 7, 7], found [4, 3, 7, 7]")),
        "{misshapen:?}"
    );
}

#[test]
fn broken_backbone_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let config = narrow(ResNetDepth::R18);

    let missing = dir.path().join("absent.pth");
    assert!(matches!(
        load_resnet(&missing, config, &device),
        Err(BackboneError::Io { .. })
    ));

    let text = dir.path().join("weights.txt");
    std::fs::write(&text, "not weights").unwrap();
    assert!(matches!(
        load_resnet(&text, config, &device),
        Err(BackboneError::UnknownFormat { .. })
    ));

    // A truncated checkpoint, in both formats.
    let pth = std::fs::read(fixture("resnet18_w4.pth")).unwrap();
    let cut = dir.path().join("cut.pth");
    std::fs::write(&cut, &pth[..pth.len() / 2]).unwrap();
    let err = load_resnet(&cut, config, &device).unwrap_err();
    assert!(
        matches!(
            err,
            BackboneError::Unreadable { .. } | BackboneError::Missing { .. }
        ),
        "{err}"
    );
    let st = std::fs::read(fixture("resnet50_w4.safetensors")).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &st[..st.len() / 2]).unwrap();
    let err = load_resnet(&cut, narrow(ResNetDepth::R50), &device).unwrap_err();
    assert!(matches!(err, BackboneError::Unreadable { .. }), "{err}");

    // Garbage with the right extension.
    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, vec![0x80u8; 4096]).unwrap();
    assert!(load_resnet(&junk, config, &device).is_err());

    // A file of other tensors: nothing expected is there, and the error shows what is.
    let other = dir.path().join("other.safetensors");
    let data = vec![0u8; 16];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &data).unwrap();
    std::fs::write(
        &other,
        safetensors::serialize([("decoder.proj.weight", view)], None).unwrap(),
    )
    .unwrap();
    let err = load_resnet(&other, config, &device).unwrap_err();
    assert!(matches!(err, BackboneError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("decoder.proj.weight"), "{err}");
}

/// `save_resnet` writes torchvision's names (batch norm `weight`/`bias`, `downsample.0`/`.1`),
/// and what it wrote loads back into the same network: PyTorch's features still.
#[test]
fn a_saved_backbone_has_torchvisions_names_and_loads_back() {
    let device = Device::flex();
    let config = narrow(ResNetDepth::R18);
    let model = load_resnet(&fixture("resnet18_w4.pth"), config, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet18.safetensors");
    genie::backbone::save_resnet(&model, &path).unwrap();

    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names: Vec<String> = file.names().into_iter().map(String::from).collect();
    for expected in [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_var",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with("gamma") || n.ends_with("beta") || n.contains("downsample.conv")),
        "{names:?}"
    );
    assert_eq!(
        file.tensor("bn1.weight").unwrap().shape(),
        [config.width],
        "batch norm's weight is gamma"
    );

    let again = load_resnet(&path, config, &device).unwrap();
    let (input, shape) = io_tensor("input");
    let input = Tensor::<4>::from_data(TensorData::new(input, shape), &device);
    let features = |m: &genie::backbone::ResNet| {
        m.features(input.clone())
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    };
    assert_eq!(features(&model), features(&again));

    let unwritable = dir.path().join("missing-folder").join("x.safetensors");
    assert!(matches!(
        genie::backbone::save_resnet(&model, &unwritable),
        Err(BackboneError::Write { .. })
    ));
}

#[test]
fn a_classifier_trains_a_batch_at_a_time_and_tests_into_a_confusion_matrix() {
    use burn::tensor::{Int, TensorData};
    use genie::backbone::{confusion_of, image_tensor, ClassifierTraining, ResNetClassifier};

    // Two classes a network tells apart at once: dark images and bright ones.
    let images = |class: usize, n: usize| -> Vec<image::RgbImage> {
        (0..n)
            .map(|i| {
                let level = if class == 0 {
                    10 + i as u8
                } else {
                    230 - i as u8
                };
                image::RgbImage::from_pixel(16, 16, image::Rgb([level, level / 2, level]))
            })
            .collect()
    };
    let batch = |device: &Device| {
        let mut all = images(0, 4);
        all.extend(images(1, 4));
        let labels = TensorData::new(vec![0i64, 0, 0, 0, 1, 1, 1, 1], [8]);
        (
            image_tensor(&all, 16, device),
            Tensor::<1, Int>::from_data(labels, device),
        )
    };
    let device = Device::default().autodiff();
    device.seed(3);
    let config = narrow(ResNetDepth::R18);
    let model = ResNetClassifier::new(config.init(&device), config.feature_dim(), 2, &device);
    let mut training = ClassifierTraining::new(model, 1e-2, &device);
    let mut losses = Vec::new();
    for _ in 0..15 {
        let (x, y) = batch(&device);
        let step = training.step(x, y).unwrap();
        assert_eq!(step.logits.dims(), [8, 2]);
        losses.push(step.loss);
    }
    assert!(
        losses[14] < 0.5 * losses[0],
        "the loss did not fall: {losses:?}"
    );
    let model = training.into_model().valid();
    let plain = Device::default();
    let tested = confusion_of(
        &model,
        2,
        [Ok::<_, burn::tensor::TensorReadError>(batch(&plain))],
    )
    .unwrap();
    assert_eq!(tested.hits(), vec![(4, 4), (4, 4)]);
}
