//! Text prompts as users write them (`data.prompts`, told apart by extension in core's
//! `PromptSource`): `.txt`, one prompt per line, blank lines skipped; `.jsonl`, one JSON
//! object per line with `prompt` and optionally `negative_prompt` (blank lines skipped).
//! Parsing is pure; a bad line is named by its number so the user can fix it.

use serde::Deserialize;
use surgery_core::spec::PromptSource;

/// One prompt and its negative prompt (the spec's `data.negative_prompt` when the line
/// has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextPrompt {
    pub prompt: String,
    pub negative: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    prompt: String,
    #[serde(default)]
    negative_prompt: Option<String>,
}

/// The prompts of a `.txt` or `.jsonl` file; `name` (its URL) goes into the errors.
pub fn parse(
    source: PromptSource,
    name: &str,
    bytes: &[u8],
    default_negative: &str,
) -> Result<Vec<TextPrompt>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("{name} is not UTF-8 text: {e}"))?;
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let number = i + 1;
        let prompt = match source {
            PromptSource::Text => TextPrompt {
                prompt: line.to_string(),
                negative: default_negative.to_string(),
            },
            PromptSource::JsonLines => {
                let parsed: Line = serde_json::from_str(line).map_err(|e| {
                    format!(r#"{name} line {number}: expected {{"prompt": "...", "negative_prompt": "..."}}: {e}"#)
                })?;
                TextPrompt {
                    prompt: parsed.prompt,
                    negative: parsed.negative_prompt.unwrap_or_else(|| default_negative.to_string()),
                }
            }
            PromptSource::Embeddings => return Err(format!("{name} holds embeddings, not text prompts")),
        };
        prompts.push(prompt);
    }
    Ok(prompts)
}

/// The prompts `first .. first + count` of `all`, or a message saying how many the file
/// holds against how many the spec uses.
pub fn slice<'a>(
    all: &'a [TextPrompt],
    name: &str,
    first: u32,
    count: u32,
    needed: u32,
) -> Result<&'a [TextPrompt], String> {
    if all.len() < needed as usize {
        return Err(format!(
            "{name} holds {} prompts; the spec uses {needed} (data.train_prompts + data.heldout_prompts)",
            all.len()
        ));
    }
    Ok(&all[first as usize..(first + count) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_files_have_a_prompt_per_line_and_skip_blank_lines() {
        let bytes = b"a red square moves left\r\n\n  \nA cat &amp; a dog\n";
        let prompts = parse(PromptSource::Text, "p.txt", bytes, "").unwrap();
        let texts: Vec<&str> = prompts.iter().map(|p| p.prompt.as_str()).collect();
        assert_eq!(texts, ["a red square moves left", "A cat &amp; a dog"]);
        assert!(prompts.iter().all(|p| p.negative.is_empty()));
    }

    #[test]
    fn json_lines_carry_their_own_negative_prompt_or_the_specs() {
        let bytes = br#"{"prompt": "a red square", "negative_prompt": "blurry"}

{"prompt": "a blue disc"}
"#;
        let prompts = parse(PromptSource::JsonLines, "p.jsonl", bytes, "low quality").unwrap();
        assert_eq!(
            prompts,
            [
                TextPrompt {
                    prompt: "a red square".into(),
                    negative: "blurry".into()
                },
                TextPrompt {
                    prompt: "a blue disc".into(),
                    negative: "low quality".into()
                },
            ]
        );
    }

    #[test]
    fn a_bad_line_is_named_by_its_number() {
        let bytes = b"{\"prompt\": \"ok\"}\n{\"text\": \"wrong key\"}\n";
        let err = parse(PromptSource::JsonLines, "s3://b/p.jsonl", bytes, "").unwrap_err();
        assert!(err.starts_with("s3://b/p.jsonl line 2: expected {\"prompt\""), "{err}");
        assert!(err.contains("unknown field `text`"), "{err}");
        let err = parse(PromptSource::JsonLines, "p.jsonl", b"not json\n", "").unwrap_err();
        assert!(err.starts_with("p.jsonl line 1:"), "{err}");
        let err = parse(PromptSource::Text, "p.txt", &[0xff, 0xfe], "").unwrap_err();
        assert!(err.contains("not UTF-8"), "{err}");
    }

    #[test]
    fn too_few_prompts_say_how_many_the_spec_uses() {
        let prompts = parse(PromptSource::Text, "p.txt", b"one\ntwo\nthree\n", "").unwrap();
        assert_eq!(slice(&prompts, "p.txt", 1, 2, 3).unwrap()[0].prompt, "two");
        let err = slice(&prompts, "p.txt", 0, 2, 5).unwrap_err();
        assert_eq!(
            err,
            "p.txt holds 3 prompts; the spec uses 5 (data.train_prompts + data.heldout_prompts)"
        );
    }
}
