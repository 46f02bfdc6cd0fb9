use super::*;

fn object(colour: Colour, row: u8, col: u8, direction: Direction, speed: Speed) -> SceneObject {
    SceneObject {
        shape: Shape::Square,
        colour,
        cell: Cell { row, col },
        direction,
        speed,
    }
}

#[test]
fn presets_are_valid() {
    Geometry::gpu().validate().unwrap();
    Geometry::cpu().validate().unwrap();
    let mut bad = Geometry::gpu();
    bad.object_size = 17;
    assert!(bad.validate().is_err());
}

#[test]
fn palette_colours_are_far_apart_and_far_from_the_background() {
    let distance = |a: [f32; 3], b: [f32; 3]| a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>().sqrt();
    for (i, a) in Colour::ALL.iter().enumerate() {
        assert!(distance(a.rgb(), BACKGROUND_RGB) > 0.7, "{a:?} near the background");
        for b in &Colour::ALL[..i] {
            assert!(distance(a.rgb(), b.rgb()) >= 0.5, "{a:?} near {b:?}");
        }
    }
}

#[test]
fn objects_stay_inside_and_bounce_back() {
    for geometry in [Geometry::gpu(), Geometry::cpu()] {
        let half = geometry.half_size();
        for direction in Direction::ALL {
            for cell in (0..16).filter_map(Cell::from_index) {
                let obj = SceneObject {
                    cell,
                    direction,
                    ..object(Colour::Red, 0, 0, direction, Speed::Fast)
                };
                for frame in 0..64 {
                    let Motion { position: [x, y], .. } = geometry.motion(&obj, frame);
                    assert!(
                        x - half >= 0.0 && x + half <= geometry.width as f64,
                        "{obj} x={x} at {frame}"
                    );
                    assert!(
                        y - half >= 0.0 && y + half <= geometry.height as f64,
                        "{obj} y={y} at {frame}"
                    );
                }
            }
        }
    }
    // Fast east from the right-most column of the GPU clip: the box centre may reach
    // 64 - 6 = 58, 2 px away, so the first step hits the wall after 2 px and comes back 1.
    let geometry = Geometry::gpu();
    let obj = object(Colour::Red, 1, 3, Direction::E, Speed::Fast);
    let xs: Vec<f64> = (0..4).map(|f| geometry.motion(&obj, f).position[0]).collect();
    assert_eq!(xs, vec![56.0, 57.0, 54.0, 51.0]);
    assert_eq!(geometry.motion(&obj, 0).velocity, [3.0, 0.0]);
    assert_eq!(geometry.motion(&obj, 1).velocity, [-3.0, 0.0]);
    // y is untouched by a horizontal move.
    assert!((0..4).all(|f| geometry.motion(&obj, f).position[1] == 24.0));
}

#[test]
fn prompts_refuse_repeated_colours_and_cells() {
    let a = object(Colour::Red, 0, 0, Direction::E, Speed::Slow);
    let b = object(Colour::Red, 1, 1, Direction::E, Speed::Slow);
    let c = object(Colour::Blue, 0, 0, Direction::E, Speed::Slow);
    assert_eq!(
        Prompt::new(vec![a, b], Background::Plain),
        Err(PromptError::RepeatedColour("red"))
    );
    assert_eq!(
        Prompt::new(vec![a, c], Background::Plain),
        Err(PromptError::RepeatedCell(0, 0))
    );
    assert_eq!(Prompt::new(vec![], Background::Plain), Err(PromptError::ObjectCount(0)));
    assert_eq!(
        Prompt::new(vec![a; 4], Background::Plain),
        Err(PromptError::ObjectCount(4))
    );
    let ok = Prompt::new(
        vec![a, object(Colour::Blue, 2, 3, Direction::NW, Speed::Fast)],
        Background::Textured,
    )
    .unwrap();
    let json = serde_json::to_string(&ok).unwrap();
    assert_eq!(serde_json::from_str::<Prompt>(&json).unwrap(), ok);
    // Deserialising checks too.
    let repeated = json.replace("blue", "red");
    assert!(serde_json::from_str::<Prompt>(&repeated).is_err());
}
