//! Prompt text to token ids, as diffusers' `WanPipeline` does it with transformers 5.
//!
//! [`prompt_clean`] is diffusers' `prompt_clean` (pipelines/wan/pipeline_wan.py):
//! `html.unescape` twice, strip, collapse whitespace runs to one space, strip. diffusers
//! first runs `ftfy.fix_text` when the ftfy package is installed; we never do (ftfy is a
//! large heuristic Python library with no Rust port), so prompts with mojibake or other
//! text ftfy would repair can tokenize differently from a pipeline that has ftfy. The
//! reference environment has no ftfy, and the goldens are generated without it.
//!
//! [`PromptTokenizer`] reads a tokenizer.json with the `tokenizers` crate and builds what
//! transformers 5's `T5Tokenizer` builds from it: T5Tokenizer keeps the file's Unigram
//! vocabulary, its `Precompiled` normaliser (dropping any other normaliser steps) and its
//! added tokens, and replaces the rest: pre-tokeniser WhitespaceSplit + Metaspace("▁",
//! prepend always, split), post-processor `"$A </s>"`, `<unk>` at id 2, no byte fallback.
//! For a file that transformers 5 itself saved this changes nothing; for older files
//! (transformers 4.x wrote Precompiled + Strip + Replace(" {2,}") and Metaspace alone) it
//! is what makes tabs and newlines tokenize as the pipeline tokenizes them.
//! [`PromptTokenizer::encode_batch`] is the pipeline's call: `padding="max_length",
//! truncation=True, add_special_tokens=True`, so a long prompt keeps its `</s>`.

use std::path::Path;
use std::sync::Mutex;

use serde_json::{Value, json};
use tch::Tensor;
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use super::TextError;
use super::html5_entities::HTML5_ENTITIES;

pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// T5Tokenizer's defaults for the tokens tokenizer_config.json may rename.
const DEFAULT_PAD_TOKEN: &str = "<pad>";
const DEFAULT_EOS_TOKEN: &str = "</s>";
/// T5Tokenizer builds its Unigram model with `unk_id=2` whatever the file says.
const T5_UNK_ID: u64 = 2;
/// The end-of-sequence token of T5Tokenizer's post-processor template (a literal there).
const TEMPLATE_EOS: &str = "</s>";

/// diffusers' `prompt_clean`: `whitespace_clean(basic_clean(text))`, without ftfy (see the
/// module doc).
pub fn prompt_clean(text: &str) -> String {
    whitespace_clean(&basic_clean(text))
}

/// `basic_clean` without `ftfy.fix_text`: `html.unescape(html.unescape(text)).strip()`.
fn basic_clean(text: &str) -> String {
    let text = html_unescape(&html_unescape(text));
    text.trim_matches(python_isspace).to_string()
}

/// `whitespace_clean`: `regex.sub(r"\s+", " ", text).strip()`. The `regex` module's `\s`
/// is Unicode White_Space, which is [`char::is_whitespace`]; `str.strip` removes
/// `str.isspace()` characters, which also include U+001C..U+001F.
fn whitespace_clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for ch in text.chars() {
        if ch.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(ch);
            in_space = false;
        }
    }
    out.trim_matches(python_isspace).to_string()
}

/// Python's `str.isspace()` for one character.
fn python_isspace(ch: char) -> bool {
    ch.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&ch)
}

/// Python's `html.unescape` (3.11): named references from the HTML5 table (longest
/// prefix when the whole name is unknown, so `&ampx` is `&x`), decimal and hex numeric
/// references with the HTML5 replacements (C1 controls as windows-1252, surrogates and
/// out-of-range numbers as U+FFFD, some code points removed). One difference: Python
/// raises on a decimal reference of more than 4300 digits (its int() limit); this gives
/// U+FFFD like any other out-of-range number.
pub fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        match character_reference(after) {
            Some((consumed, replacement)) => {
                out.push_str(&replacement);
                rest = &after[consumed..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The reference `html.unescape`'s pattern matches right after an '&', and what it becomes:
/// (bytes consumed after the '&', replacement). The pattern, in order:
/// `#[0-9]+;?`, `#[xX][0-9a-fA-F]+;?`, `[^\t\n\f <&#;]{1,32};?`.
fn character_reference(after: &str) -> Option<(usize, String)> {
    if let Some(number) = after.strip_prefix('#') {
        let digits = number.bytes().take_while(u8::is_ascii_digit).count();
        let (start, len, radix) = if digits > 0 {
            (1, digits, 10)
        } else if number.starts_with(['x', 'X']) {
            let hex = number[1..].bytes().take_while(u8::is_ascii_hexdigit).count();
            if hex == 0 {
                return None;
            }
            (2, hex, 16)
        } else {
            return None;
        };
        let body = &after[start..start + len];
        let mut consumed = start + len;
        if after[consumed..].starts_with(';') {
            consumed += 1;
        }
        // Any number past u32 is out of range, like any past 0x10FFFF.
        let code = u32::from_str_radix(body, radix).unwrap_or(u32::MAX);
        return Some((consumed, numeric_reference(code)));
    }
    let name_len: usize = after
        .chars()
        .take_while(|ch| !matches!(ch, '\t' | '\n' | '\u{c}' | ' ' | '<' | '&' | '#' | ';'))
        .take(32)
        .map(char::len_utf8)
        .sum();
    if name_len == 0 {
        return None;
    }
    let consumed = name_len + usize::from(after[name_len..].starts_with(';'));
    let reference = &after[..consumed];
    if let Some(replacement) = named_entity(reference) {
        return Some((consumed, replacement.to_string()));
    }
    // The longest known prefix of at least two characters, the rest kept as text.
    let boundaries: Vec<usize> = reference.char_indices().map(|(i, _)| i).skip(2).collect();
    for &end in boundaries.iter().rev() {
        if let Some(replacement) = named_entity(&reference[..end]) {
            return Some((consumed, format!("{replacement}{}", &reference[end..])));
        }
    }
    Some((consumed, format!("&{reference}")))
}

fn named_entity(name: &str) -> Option<&'static str> {
    HTML5_ENTITIES
        .binary_search_by(|(entry, _)| entry.as_bytes().cmp(name.as_bytes()))
        .ok()
        .map(|i| HTML5_ENTITIES[i].1)
}

/// Python's `_replace_charref` for a numeric reference.
fn numeric_reference(code: u32) -> String {
    // _invalid_charrefs: NUL, CR and the C1 range read as windows-1252.
    const C1: [char; 32] = [
        '\u{20ac}', '\u{81}', '\u{201a}', '\u{192}', '\u{201e}', '\u{2026}', '\u{2020}', '\u{2021}', '\u{2c6}',
        '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8d}', '\u{17d}', '\u{8f}', '\u{90}', '\u{2018}', '\u{2019}',
        '\u{201c}', '\u{201d}', '\u{2022}', '\u{2013}', '\u{2014}', '\u{2dc}', '\u{2122}', '\u{161}', '\u{203a}',
        '\u{153}', '\u{9d}', '\u{17e}', '\u{178}',
    ];
    match code {
        0x00 => return '\u{fffd}'.to_string(),
        0x0d => return '\r'.to_string(),
        0x80..=0x9f => return C1[(code - 0x80) as usize].to_string(),
        _ => {}
    }
    let Some(ch) = char::from_u32(code) else {
        return '\u{fffd}'.to_string(); // a surrogate or past U+10FFFF
    };
    // _invalid_codepoints: removed.
    let invalid =
        matches!(code, 0x01..=0x08 | 0x0b | 0x0e..=0x1f | 0x7f..=0x9f | 0xfdd0..=0xfdef) || (code & 0xfffe) == 0xfffe;
    if invalid { String::new() } else { ch.to_string() }
}

/// Token ids and attention masks of a batch, both `[B, max_len]` i64 on the CPU, padded
/// on the right with the pad token (mask 0).
#[derive(Debug)]
pub struct TokenBatch {
    pub ids: Tensor,
    pub mask: Tensor,
}

/// A T5/umT5 tokenizer as transformers 5 builds it from a tokenizer.json (module doc).
#[derive(Debug)]
pub struct PromptTokenizer {
    /// Behind a lock because truncation and padding are settings of the tokenizer, set
    /// for each call's `max_len`.
    tokenizer: Mutex<Tokenizer>,
    pad_token: String,
    pad_id: u32,
    vocab_size: usize,
}

impl PromptTokenizer {
    /// Loads `path`: a folder holding tokenizer.json (and, optionally, the
    /// tokenizer_config.json naming the pad and end-of-sequence tokens), or the
    /// tokenizer.json file itself.
    pub fn load(path: &Path) -> Result<Self, TextError> {
        let (file, config) = if path.is_dir() {
            (path.join(TOKENIZER_FILE), path.join(TOKENIZER_CONFIG_FILE))
        } else {
            let dir = path.parent().unwrap_or(Path::new("."));
            (path.to_path_buf(), dir.join(TOKENIZER_CONFIG_FILE))
        };
        if !file.is_file() {
            return Err(TextError::MissingTokenizer { path: file });
        }
        let (pad_token, eos_token) = special_tokens(&config)?;
        let text = std::fs::read_to_string(&file).map_err(|source| TextError::Io {
            path: file.clone(),
            source,
        })?;
        let bad = |reason: String| TextError::BadTokenizer {
            path: file.clone(),
            reason,
        };
        let spec: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let spec = t5_backend_spec(spec).map_err(bad)?;
        let mut tokenizer: Tokenizer = spec.to_string().parse().map_err(|e| bad(format!("{e}")))?;
        let token_id = |token: &str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| bad(format!("the token {token:?} is not in the vocabulary")))
        };
        let pad_id = token_id(&pad_token)?;
        token_id(&eos_token)?;
        // T5Tokenizer's template names the token "</s>" literally.
        let template_eos = token_id(TEMPLATE_EOS)?;
        let template: Value = json!({
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": TEMPLATE_EOS, "type_id": 0}}],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": TEMPLATE_EOS, "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": TEMPLATE_EOS, "type_id": 0}},
            ],
            "special_tokens": {TEMPLATE_EOS: {"id": TEMPLATE_EOS, "ids": [template_eos], "tokens": [TEMPLATE_EOS]}},
        });
        let post_processor: tokenizers::processors::PostProcessorWrapper =
            serde_json::from_value(template).map_err(|e| bad(format!("post-processor: {e}")))?;
        tokenizer.with_post_processor(Some(post_processor));
        let vocab_size = tokenizer.get_vocab_size(true);
        Ok(PromptTokenizer {
            tokenizer: Mutex::new(tokenizer),
            pad_token,
            pad_id,
            vocab_size,
        })
    }

    /// The number of ids, added tokens included: every id is below it.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// transformers' `tokenizer(texts, padding="max_length", max_length=max_len,
    /// truncation=True, add_special_tokens=True)`: each text's ids, cut to `max_len - 1`
    /// and ended by `</s>`, padded to `max_len`. The texts are used as given (the pipeline
    /// cleans them first: [`prompt_clean`]).
    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S], max_len: usize) -> Result<TokenBatch, TextError> {
        if max_len < 2 {
            return Err(TextError::Tokenize {
                reason: format!("max_len {max_len} leaves no room for a token and </s>"),
            });
        }
        let truncation = TruncationParams {
            direction: TruncationDirection::Right,
            max_length: max_len,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        };
        let padding = PaddingParams {
            strategy: PaddingStrategy::Fixed(max_len),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: self.pad_id,
            pad_type_id: 0,
            pad_token: self.pad_token.clone(),
        };
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let encodings = {
            let mut tokenizer = self.tokenizer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let failed = |e: tokenizers::Error| TextError::Tokenize { reason: e.to_string() };
            tokenizer.with_truncation(Some(truncation)).map_err(failed)?;
            tokenizer.with_padding(Some(padding));
            tokenizer.encode_batch(inputs, true).map_err(failed)?
        };
        let mut ids = Vec::with_capacity(texts.len() * max_len);
        let mut mask = Vec::with_capacity(texts.len() * max_len);
        for encoding in &encodings {
            assert_eq!(encoding.len(), max_len, "padding and truncation give max_len tokens");
            ids.extend(encoding.get_ids().iter().map(|&id| i64::from(id)));
            mask.extend(encoding.get_attention_mask().iter().map(|&m| i64::from(m)));
        }
        let shape = [texts.len() as i64, max_len as i64];
        Ok(TokenBatch {
            ids: Tensor::from_slice(&ids).view(shape),
            mask: Tensor::from_slice(&mask).view(shape),
        })
    }
}

/// The pad and end-of-sequence tokens named by tokenizer_config.json (a string or an
/// AddedToken object with "content"), or T5Tokenizer's defaults.
fn special_tokens(config: &Path) -> Result<(String, String), TextError> {
    if !config.is_file() {
        return Ok((DEFAULT_PAD_TOKEN.into(), DEFAULT_EOS_TOKEN.into()));
    }
    let text = std::fs::read_to_string(config).map_err(|source| TextError::Io {
        path: config.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| TextError::BadTokenizer {
        path: config.to_path_buf(),
        reason,
    };
    let json: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let token = |key: &str, default: &str| match json.get(key) {
        None | Some(Value::Null) => Ok(default.to_string()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| bad(format!("{key} has no \"content\""))),
        Some(other) => Err(bad(format!("{key} is {other}, not a token"))),
    };
    Ok((
        token("pad_token", DEFAULT_PAD_TOKEN)?,
        token("eos_token", DEFAULT_EOS_TOKEN)?,
    ))
}

/// A tokenizer.json rewritten to what transformers 5's T5Tokenizer builds from it (module
/// doc). The post-processor is set after loading, once the `</s>` id is known.
fn t5_backend_spec(mut spec: Value) -> Result<Value, String> {
    let root = spec.as_object_mut().ok_or("the top level is not an object")?;
    let model = root
        .get_mut("model")
        .and_then(Value::as_object_mut)
        .ok_or("no \"model\" object")?;
    match model.get("type").and_then(Value::as_str) {
        Some("Unigram") => {}
        other => {
            return Err(format!(
                "model type {other:?}: a T5/umT5 tokenizer is a SentencePiece Unigram model"
            ));
        }
    }
    model.insert("unk_id".into(), json!(T5_UNK_ID));
    model.insert("byte_fallback".into(), json!(false));
    let precompiled = match root.get("normalizer") {
        Some(n) if n.get("type").and_then(Value::as_str) == Some("Precompiled") => Some(n.clone()),
        Some(n) if n.get("type").and_then(Value::as_str) == Some("Sequence") => n
            .get("normalizers")
            .and_then(Value::as_array)
            .and_then(|steps| {
                steps
                    .iter()
                    .find(|s| s.get("type").and_then(Value::as_str) == Some("Precompiled"))
            })
            .cloned(),
        _ => None,
    };
    root.insert("normalizer".into(), precompiled.unwrap_or(Value::Null));
    root.insert(
        "pre_tokenizer".into(),
        json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "WhitespaceSplit"},
                {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": true},
            ],
        }),
    );
    root.insert("post_processor".into(), Value::Null);
    root.insert("truncation".into(), Value::Null);
    root.insert("padding".into(), Value::Null);
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_table_is_sorted_for_binary_search() {
        assert!(HTML5_ENTITIES.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(named_entity("amp;"), Some("&"));
        assert_eq!(named_entity("amp"), Some("&"));
        assert_eq!(named_entity("ampx"), None);
    }

    #[test]
    fn unescape_follows_python() {
        assert_eq!(html_unescape("a &amp; b"), "a & b");
        assert_eq!(html_unescape("&ampx &notit; &#65;&#x42 &#;"), "&x ¬it; AB &#;");
        assert_eq!(html_unescape("&#128;&#0;&#1;&#xD800;"), "\u{20ac}\u{fffd}\u{fffd}");
    }

    #[test]
    fn clean_collapses_and_strips() {
        assert_eq!(prompt_clean("  a \t\n b\u{3000}c  "), "a b c");
        assert_eq!(prompt_clean("\u{1c}x\u{1c}y\u{1c}"), "x\u{1c}y");
        assert_eq!(prompt_clean("&amp;amp;"), "&");
    }
}
