//! Generated chat text → what OpenAI's API separates: reasoning (`reasoning_content`), the answer
//! (`content`) and tool calls. A streaming parser fed the text deltas as they come: text that may be the
//! start of a marker is held back until it is decided, a tool call is given out once its closing marker
//! (or the end of the output) arrives, and a call that does not parse stays visible as content.
//! Which markers apply is chosen once per model from its chat template ([`OutputFormat::detect`]).

pub(crate) mod tool_formats;

use tool_formats::held_suffix;
pub use tool_formats::{CallHeader, ParsedCall, ToolFormat};

/// One piece of parsed output, in order. A call comes either whole (`ToolCall`: a layout read only at its
/// end) or streamed: `ToolCallBegin` once its name is known, then its arguments' text in `ToolCallArgs`
/// pieces as they are generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Content(String),
    Reasoning(String),
    ToolCall(ParsedCall),
    ToolCallBegin { id: Option<String>, name: String },
    ToolCallArgs(String),
}

/// The markers around a model's reasoning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasoningMarkers {
    pub start: &'static str,
    pub end: &'static str,
}

/// Qwen3, DeepSeek-R1 / V3.1, Kimi K2 Thinking.
pub const THINK: ReasoningMarkers = ReasoningMarkers {
    start: "<think>",
    end: "</think>",
};
/// Kimi-VL / Kimi-Dev.
pub const KIMI_THINK: ReasoningMarkers = ReasoningMarkers {
    start: "◁think▷",
    end: "◁/think▷",
};

impl ReasoningMarkers {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "think" | "qwen3" | "deepseek_r1" => Some(THINK),
            "kimi" => Some(KIMI_THINK),
            _ => None,
        }
    }

    /// Whether the prompt ends with a closed reasoning block (a template told not to think writes an
    /// empty one): the output is the answer, no reasoning comes first.
    pub fn closed_at_end_of(&self, prompt: &str) -> bool {
        prompt.trim_end().ends_with(self.end)
    }

    /// Whether generation starts inside reasoning: the prompt opened a reasoning block it did not close
    /// (DeepSeek-R1 and thinking templates prefill `<think>\n`).
    pub fn open_at_end_of(&self, prompt: &str) -> bool {
        match (prompt.rfind(self.start), prompt.rfind(self.end)) {
            (Some(s), Some(e)) => s > e,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

/// How a model's output is split; chosen at startup (template or flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputFormat {
    pub reasoning: Option<ReasoningMarkers>,
    pub tools: Option<ToolFormat>,
}

impl OutputFormat {
    /// The markers a chat template uses: reasoning if it writes `<think>` (or Kimi's `◁think▷`), tool
    /// calls in the format it renders earlier calls in.
    pub fn detect(template: &str) -> Self {
        let reasoning = [THINK, KIMI_THINK]
            .into_iter()
            .find(|m| template.contains(m.start));
        Self {
            reasoning,
            tools: ToolFormat::detect(template),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Content,
    Reasoning,
    /// Between the calls of a group (Kimi, DeepSeek).
    Section,
    /// Inside a call, up to its closing marker.
    Call,
    /// After Mistral's `[TOOL_CALLS]`: calls up to the end of the output.
    Rest,
}

/// The streaming parser of one choice.
pub struct ChatParser {
    reasoning: Option<ReasoningMarkers>,
    tools: Option<ToolFormat>,
    mode: Mode,
    in_section: bool,
    /// Text not yet given out.
    buf: String,
    /// Whitespace at the end of the content or reasoning so far, given out only if more of it follows
    /// (so that `answer\n<tool_call>` gives `answer`).
    trailing_ws: String,
    /// Leading whitespace of the current kind of text is dropped (just after a marker).
    skip_leading: bool,
    calls: usize,
    /// The call being streamed: where its arguments start in `buf` and how many bytes of them are out.
    streaming: Option<(usize, usize)>,
}

impl ChatParser {
    /// `tools`: parse tool calls in this format (`None`: tool calls are not expected, all text is
    /// content or reasoning). `in_reasoning`: the output starts inside the reasoning block.
    pub fn new(
        reasoning: Option<ReasoningMarkers>,
        tools: Option<ToolFormat>,
        in_reasoning: bool,
    ) -> Self {
        let in_reasoning = in_reasoning && reasoning.is_some();
        Self {
            reasoning,
            tools,
            mode: if in_reasoning {
                Mode::Reasoning
            } else {
                Mode::Content
            },
            in_section: false,
            buf: String::new(),
            trailing_ws: String::new(),
            skip_leading: in_reasoning,
            calls: 0,
            streaming: None,
        }
    }

    /// Tool calls given out so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// The pieces `text` completes.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        while self.step(&mut out) {}
        out
    }

    /// The output ended: everything still held.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        while self.step(&mut out) {}
        let rest = std::mem::take(&mut self.buf);
        match self.mode {
            Mode::Content => {
                self.text(&rest, &mut out);
                if self.calls == 0 {
                    let ws = std::mem::take(&mut self.trailing_ws);
                    push_piece(&mut out, Piece::Content(ws));
                }
            }
            Mode::Reasoning => self.text(&rest, &mut out),
            Mode::Section => {}
            Mode::Call | Mode::Rest => self.close_call(&rest, false, &mut out),
        }
        out.retain(|p| !matches!(p, Piece::Content(t) | Piece::Reasoning(t) if t.is_empty()));
        out
    }

    /// The markers that end the current mode, in the order they are tried at one position.
    fn markers(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        let tools = self.tools.map(|f| f.markers());
        match self.mode {
            Mode::Content => {
                if let Some(r) = self.reasoning {
                    m.push(r.start);
                }
                if let Some(t) = &tools {
                    m.extend(t.section_begin);
                    m.push(t.call_begin);
                }
            }
            Mode::Reasoning => m.extend(self.reasoning.map(|r| r.end)),
            Mode::Section => {
                if let Some(t) = &tools {
                    m.push(t.call_begin);
                    m.extend(t.section_end);
                }
            }
            Mode::Call => m.extend(self.tools.and_then(|f| f.call_terminator())),
            Mode::Rest => {}
        }
        m
    }

    /// Handles the next marker in the buffer, or gives out what can no longer start one. Returns
    /// whether a marker was consumed (another step may follow).
    fn step(&mut self, out: &mut Vec<Piece>) -> bool {
        let markers = self.markers();
        let found = markers
            .iter()
            .filter_map(|m| self.buf.find(m).map(|at| (at, *m)))
            .min_by_key(|&(at, _)| at);
        let Some((at, marker)) = found else {
            if self.mode == Mode::Call {
                self.stream_call(&markers, out);
                return false;
            }
            // No whole marker: give out text up to a possible marker start.
            if matches!(self.mode, Mode::Content | Mode::Reasoning | Mode::Section) {
                let keep = held_suffix(&self.buf, &markers);
                let ready: String = self.buf.drain(..self.buf.len() - keep).collect();
                if self.mode != Mode::Section {
                    self.text(&ready, out);
                }
            }
            return false;
        };
        let before: String = self.buf.drain(..at).collect();
        self.buf.drain(..marker.len());
        let tools = self.tools.map(|f| f.markers());
        match self.mode {
            Mode::Content if Some(marker) == self.reasoning.map(|r| r.start) => {
                self.text(&before, out);
                self.switch(Mode::Reasoning);
            }
            Mode::Reasoning => {
                self.text(&before, out);
                self.switch(Mode::Content);
            }
            Mode::Content => {
                self.text(&before, out);
                let t = tools.as_ref();
                if t.and_then(|t| t.section_begin) == Some(marker) {
                    self.in_section = true;
                    self.switch(Mode::Section);
                } else if self.tools.and_then(|f| f.call_terminator()).is_none() {
                    self.switch(Mode::Rest);
                } else {
                    self.switch(Mode::Call);
                }
            }
            Mode::Section => {
                if tools.as_ref().and_then(|t| t.section_end) == Some(marker) {
                    self.in_section = false;
                    self.switch(Mode::Content);
                } else {
                    self.switch(Mode::Call);
                }
            }
            Mode::Call => {
                self.close_call(&before, true, out);
                let next = if self.tools == Some(ToolFormat::MistralV11) {
                    Mode::Call // `[TOOL_CALLS]` also opens the next call
                } else if self.in_section {
                    Mode::Section
                } else {
                    Mode::Content
                };
                self.switch(next);
            }
            Mode::Rest => {}
        }
        true
    }

    fn switch(&mut self, mode: Mode) {
        self.mode = mode;
        self.streaming = None;
        self.trailing_ws.clear();
        self.skip_leading = true;
    }

    /// Inside a call (`buf` holds its text so far): once its name is known, its start; then as much of its
    /// arguments as can no longer be part of what closes it.
    fn stream_call(&mut self, terminators: &[&str], out: &mut Vec<Piece>) {
        let Some(format) = self.tools else {
            return;
        };
        if self.streaming.is_none() {
            if let Some(CallHeader {
                id,
                name,
                args_start,
            }) = format.header(&self.buf)
            {
                self.calls += 1;
                out.push(Piece::ToolCallBegin { id, name });
                self.streaming = Some((args_start, 0));
            }
        }
        if let Some((start, sent)) = self.streaming {
            let safe = self.buf.len() - held_suffix(&self.buf, terminators);
            let end = format.args_end(&self.buf, start, false).min(safe);
            if end > start + sent {
                out.push(Piece::ToolCallArgs(self.buf[start + sent..end].to_owned()));
                self.streaming = Some((start, end - start));
            }
        }
    }

    /// A call's text is complete (`closed`: by its end marker, else by the end of the output): the rest of
    /// a streamed call's arguments; or its calls, or (not well-formed) the text as it was, as content.
    fn close_call(&mut self, body: &str, closed: bool, out: &mut Vec<Piece>) {
        let Some(format) = self.tools else {
            return;
        };
        if let Some((start, sent)) = self.streaming.take() {
            let end = format.args_end(body, start, true);
            if end > start + sent && body.is_char_boundary(start + sent) {
                out.push(Piece::ToolCallArgs(body[start + sent..end].to_owned()));
            }
            return;
        }
        match format.parse_body(body) {
            Some(calls) if !calls.is_empty() => {
                self.calls += calls.len();
                out.extend(calls.into_iter().map(Piece::ToolCall));
            }
            _ => {
                let m = format.markers();
                let end = if closed {
                    m.call_end.unwrap_or_default()
                } else {
                    ""
                };
                let raw = format!("{}{body}{end}", m.call_begin);
                push_piece(out, Piece::Content(raw));
            }
        }
    }

    /// Text of the current kind (content or reasoning), with leading whitespace after a marker dropped
    /// and trailing whitespace held.
    fn text(&mut self, text: &str, out: &mut Vec<Piece>) {
        let mut t = text;
        if self.skip_leading {
            t = t.trim_start();
            if t.is_empty() {
                return;
            }
            self.skip_leading = false;
        }
        let body = t.trim_end().len();
        if body > 0 {
            let mut piece = std::mem::take(&mut self.trailing_ws);
            piece.push_str(&t[..body]);
            let piece = match self.mode {
                Mode::Reasoning => Piece::Reasoning(piece),
                _ => Piece::Content(piece),
            };
            push_piece(out, piece);
        }
        self.trailing_ws.push_str(&t[body..]);
    }
}

/// Appends `p`, merged into the last piece when both are text of the same kind.
fn push_piece(out: &mut Vec<Piece>, p: Piece) {
    match (out.last_mut(), p) {
        (Some(Piece::Content(a)), Piece::Content(b))
        | (Some(Piece::Reasoning(a)), Piece::Reasoning(b)) => a.push_str(&b),
        (_, p) => out.push(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All pieces, text of one kind merged, a streamed call's arguments merged.
    fn parse_all(p: &mut ChatParser, pieces: &[&str]) -> Vec<Piece> {
        let mut out: Vec<Piece> = Vec::new();
        let all = pieces.iter().flat_map(|t| p.push(t)).collect::<Vec<_>>();
        for piece in all.into_iter().chain(p.finish()) {
            match (out.last_mut(), piece) {
                (Some(Piece::ToolCallArgs(a)), Piece::ToolCallArgs(b)) => a.push_str(&b),
                (_, piece) => push_piece(&mut out, piece),
            }
        }
        out
    }

    #[test]
    fn markers_split_across_deltas_are_held_back() {
        let mut p = ChatParser::new(Some(THINK), Some(ToolFormat::Hermes), false);
        let out = parse_all(
            &mut p,
            &[
                "<th",
                "ink>\nhm",
                "m\n</thi",
                "nk>\n\nOk.\n<tool",
                "_call>\n{\"name\": \"f\", ",
                "\"arguments\": {",
                "}}\n</tool_call>",
            ],
        );
        assert_eq!(
            out,
            vec![
                Piece::Reasoning("hmm".into()),
                Piece::Content("Ok.".into()),
                Piece::ToolCallBegin {
                    id: None,
                    name: "f".into()
                },
                Piece::ToolCallArgs("{}".into())
            ]
        );
    }

    #[test]
    fn plain_text_is_kept_exactly_and_near_markers_released() {
        let mut p = ChatParser::new(Some(THINK), Some(ToolFormat::Hermes), false);
        assert_eq!(p.push("a < b\n"), vec![Piece::Content("a < b".into())]);
        assert_eq!(p.push("<to"), vec![]);
        assert_eq!(p.finish(), vec![Piece::Content("\n<to".into())]);
    }

    #[test]
    fn broken_calls_stay_visible_as_content() {
        let mut p = ChatParser::new(None, Some(ToolFormat::Hermes), false);
        let out = parse_all(&mut p, &["<tool_call>{not json}</tool_call>"]);
        assert_eq!(
            out,
            vec![Piece::Content("<tool_call>{not json}</tool_call>".into())]
        );
        let mut p = ChatParser::new(None, Some(ToolFormat::Hermes), false);
        let out = parse_all(&mut p, &["<tool_call>{\"name\": \"f\""]);
        assert_eq!(
            out,
            vec![Piece::Content("<tool_call>{\"name\": \"f\"".into())]
        );
    }

    #[test]
    fn output_may_start_inside_reasoning() {
        assert!(THINK.open_at_end_of("<|im_start|>assistant\n<think>\n"));
        assert!(!THINK.open_at_end_of("<think>\n\n</think>\n\n"));
        let mut p = ChatParser::new(Some(THINK), None, true);
        let out = parse_all(&mut p, &["\nsteps\n</think>\n\nanswer"]);
        assert_eq!(
            out,
            vec![
                Piece::Reasoning("steps".into()),
                Piece::Content("answer".into())
            ]
        );
        // Cut off while reasoning: all of it is reasoning.
        let mut p = ChatParser::new(Some(THINK), None, true);
        assert_eq!(
            parse_all(&mut p, &["still thinking"]),
            vec![Piece::Reasoning("still thinking".into())]
        );
    }
}
