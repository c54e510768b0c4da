//! Escaping container-derived text for each chat format, so that a health check's output, a
//! log line or a root cause quoting one is shown as the characters it is and can never
//! mention anyone, make a link or change a message's formatting.
//!
//! The renderers call [`escape`] through one place (`render::Said`), on every piece of text
//! that came from a container, before our own formatting is put around it. Our own words
//! (bold labels, headers, the dashboard link) are written after escaping and so keep working.
//!
//! What every chat markup does, besides its own rules below:
//! - control characters other than newline and tab are dropped, and so are the Unicode
//!   direction overrides and isolates, which can make text read differently from what it is;
//! - `://` gets a zero-width space after its colon, so no bare URL becomes a link;
//! - an `@` followed by a letter or digit gets a zero-width space after it, so `@everyone`,
//!   `@here` and `@channel` stay words (Discord payloads also disable every mention with
//!   `allowed_mentions`, whatever the text says; Teams reads no bare mention, but the same
//!   rule everywhere is one less thing to remember).

/// Where a piece of text is going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Markup {
    /// Text people read as it is: ntfy bodies, PagerDuty, Teams' notification summary.
    Plain,
    /// Slack `plain_text` objects (headers, the detail and the grouped list): no formatting
    /// there, but `&`, `<` and `>` are still Slack's control characters.
    SlackPlainText,
    /// Slack mrkdwn: the top-level `text` and the `mrkdwn` objects we put bold labels in.
    Slack,
    /// Discord message content and embed titles.
    Discord,
    /// Microsoft Teams MessageCard text and title (markdown that also renders some HTML).
    Teams,
    /// HTML as Telegram (`parse_mode: HTML`) and Matrix (`formatted_body`) read it: the
    /// four characters HTML gives meaning become entities, so no tag or link can start.
    Html,
}

/// Zero-width space: breaks a word for parsers, invisible to people.
const ZWSP: char = '\u{200B}';
/// Soft hyphen: invisible, and not a blank, so a `>` after it does not start a Slack quote.
const SOFT_HYPHEN: char = '\u{AD}';

/// Where in its line a character stands, for the markups whose syntax starts lines
/// (quotes, headers, lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lead {
    /// Only blanks before it on its line.
    Start,
    /// Only blanks and then digits before it (`12` in `12. item`).
    Digits,
    /// Anything else.
    Inside,
}

/// One character with what surrounds it.
struct At {
    c: char,
    prev: Option<char>,
    next: Option<char>,
    /// `://` starts here.
    scheme_colon: bool,
    lead: Lead,
}

/// `s` escaped for `m`. A piece of text is treated as starting a line, since a renderer may
/// put it at the start of one.
pub fn escape(s: &str, m: Markup) -> String {
    let chars: Vec<char> = s.chars().filter(|c| !dropped(*c)).collect();
    let mut out = String::with_capacity(s.len() + s.len() / 4);
    let mut lead = Lead::Start;
    for (i, &c) in chars.iter().enumerate() {
        let at = At {
            c,
            prev: i.checked_sub(1).and_then(|j| chars.get(j)).copied(),
            next: chars.get(i + 1).copied(),
            scheme_colon: c == ':'
                && chars.get(i + 1) == Some(&'/')
                && chars.get(i + 2) == Some(&'/'),
            lead,
        };
        match m {
            Markup::Plain => out.push(c),
            Markup::SlackPlainText => slack_plain_text(&at, &mut out),
            Markup::Slack => slack(&at, &mut out),
            Markup::Discord => discord(&at, &mut out),
            Markup::Teams => teams(&at, &mut out),
            Markup::Html => html(&at, &mut out),
        }
        lead = match (c, lead) {
            ('\n', _) => Lead::Start,
            (' ' | '\t', Lead::Start) => Lead::Start,
            ('0'..='9', Lead::Start | Lead::Digits) => Lead::Digits,
            _ => Lead::Inside,
        };
    }
    out
}

/// An HTTP header value made of `s`: ASCII only, control characters (CR and LF above all,
/// which would end the header and start another) turned into spaces, at most `limit`
/// characters with `...` marking a cut.
pub fn header_value(s: &str, limit: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .filter(char::is_ascii)
        .collect();
    let v = one_line.trim();
    if v.len() <= limit {
        return v.to_owned();
    }
    // ASCII only, so bytes are characters and any index is a boundary.
    let keep = limit.saturating_sub(3);
    format!("{}...", v.get(..keep).unwrap_or_default().trim_end())
}

/// Characters no message should carry.
fn dropped(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The rules every chat markup shares: bare links and bare mentions. Returns whether it
/// wrote `at.c`.
fn common(at: &At, out: &mut String) -> bool {
    if at.scheme_colon {
        out.push(':');
        out.push(ZWSP);
        return true;
    }
    if at.c == '@' && at.next.is_some_and(char::is_alphanumeric) {
        out.push('@');
        out.push(ZWSP);
        return true;
    }
    false
}

/// Slack's documented escaping: `&`, `<` and `>` as entities, so `<!channel>`, `<@U123>` and
/// `<http://x|label>` are shown, not parsed.
fn slack_entity(c: char, out: &mut String) -> bool {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        _ => return false,
    }
    true
}

/// Slack reads no `[text](url)`, but a zero-width space in `](` makes sure no markdown
/// reader of the message (a client, a bridge, a markdown block some day) ever does.
fn slack_bracket(at: &At, out: &mut String) -> bool {
    if at.c == ']' && at.next == Some('(') {
        out.push(']');
        out.push(ZWSP);
        return true;
    }
    false
}

fn slack_plain_text(at: &At, out: &mut String) {
    if !common(at, out) && !slack_entity(at.c, out) && !slack_bracket(at, out) {
        out.push(at.c);
    }
}

/// Slack mrkdwn has no escape character. `*`, `_` and `~` only format at a word boundary, so
/// inside a word (`my_app_1`) they stay; elsewhere they become look-alikes that Slack does
/// not parse. Backticks always do. A `>` opening a line gets a soft hyphen before it (Slack
/// quotes `&gt;` too). A zero-width space would not do here: Slack takes it for a word
/// boundary, which is what makes formatting start.
fn slack(at: &At, out: &mut String) {
    if common(at, out) || slack_bracket(at, out) {
        return;
    }
    if at.c == '>' && at.lead == Lead::Start {
        out.push(SOFT_HYPHEN);
    }
    if slack_entity(at.c, out) {
        return;
    }
    let in_word =
        at.prev.is_some_and(char::is_alphanumeric) && at.next.is_some_and(char::is_alphanumeric);
    match at.c {
        '*' if !in_word => out.push('\u{2217}'), // ∗ asterisk operator
        '_' if !in_word => out.push('\u{02CD}'), // ˍ modifier letter low macron
        '~' if !in_word => out.push('\u{223C}'), // ∼ tilde operator
        '`' => out.push('\u{02CB}'),             // ˋ modifier letter grave accent
        c => out.push(c),
    }
}

/// Discord's markdown takes a backslash before any punctuation as "this character, literally",
/// so every character its syntax uses gets one; those that only mean something at the start
/// of a line (lists, `-#` small text, `1.` lists) get one there.
fn discord(at: &At, out: &mut String) {
    if common(at, out) {
        return;
    }
    let special = matches!(
        at.c,
        '\\' | '*' | '_' | '~' | '`' | '|' | '<' | '>' | '[' | ']' | '(' | ')' | '#'
    ) || (at.lead == Lead::Start && matches!(at.c, '-' | '+'))
        || (at.lead == Lead::Digits && at.c == '.');
    if special {
        out.push('\\');
    }
    out.push(at.c);
}

/// Teams renders markdown and some HTML: `&`, `<` and `>` become entities (no tag, no
/// `<http://x>` link), and markdown's characters become numeric entities, which markdown
/// never parses and HTML shows as the character. Brackets are enough to stop `[x](url)`.
fn teams(at: &At, out: &mut String) {
    if common(at, out) {
        return;
    }
    let entity = match at.c {
        '&' => "&amp;",
        '<' => "&lt;",
        '>' => "&gt;",
        '\\' => "&#92;",
        '*' => "&#42;",
        '_' => "&#95;",
        '~' => "&#126;",
        '`' => "&#96;",
        '[' => "&#91;",
        ']' => "&#93;",
        '#' => "&#35;",
        '|' => "&#124;",
        '-' if at.lead == Lead::Start => "&#45;",
        '+' if at.lead == Lead::Start => "&#43;",
        '.' if at.lead == Lead::Digits => "&#46;",
        ')' if at.lead == Lead::Digits => "&#41;",
        c => {
            out.push(c);
            return;
        }
    };
    out.push_str(entity);
}

/// HTML text: `&`, `<`, `>` and `"` as entities (the set Telegram's HTML mode accepts), and
/// bare links and mentions broken as for every chat.
fn html(at: &At, out: &mut String) {
    if common(at, out) {
        return;
    }
    match at.c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '"' => out.push_str("&quot;"),
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(input, markup, expected)`; `·` in expected stands for a zero-width space.
    #[track_caller]
    fn check(input: &str, m: Markup, want: &str) {
        let got = escape(input, m).replace(ZWSP, "·");
        assert_eq!(got, want, "{m:?}: {input:?}");
    }

    #[test]
    fn ordinary_text_stays_as_it_is() {
        for m in [
            Markup::Plain,
            Markup::SlackPlainText,
            Markup::Slack,
            Markup::Discord,
            Markup::Teams,
            Markup::Html,
        ] {
            for s in [
                "GET /healthz 200",
                "exit code 137",
                "container api died",
                "host disk use is 92.4 %, over 90 %",
                "restarted in 0.4 s; verification: running and healthy",
            ] {
                check(s, m, s);
            }
        }
    }

    #[test]
    fn slack_mrkdwn() {
        use Markup::Slack as S;
        check("<!channel>", S, "&lt;!channel&gt;");
        check("<@U123> <!here>", S, "&lt;@·U123&gt; &lt;!here&gt;");
        check(
            "<http://evil.example|docs>",
            S,
            "&lt;http:·//evil.example|docs&gt;",
        );
        check("a & b", S, "a &amp; b");
        check("*bold* _it_ ~s~ `c`", S, "∗bold∗ ˍitˍ ∼s∼ ˋcˋ");
        // Inside a word they format nothing and stay what they are.
        check("my_app_1 2*3", S, "my_app_1 2*3");
        check("@everyone @here @channel", S, "@·everyone @·here @·channel");
        check("ops@example.com", S, "ops@·example.com");
        check(
            "> quoted\n  > again",
            S,
            "\u{AD}&gt; quoted\n  \u{AD}&gt; again",
        );
        check("a > b", S, "a &gt; b");
        check("[x](http://e)", S, "[x]·(http:·//e)");
    }

    #[test]
    fn html_for_telegram_and_matrix() {
        use Markup::Html as H;
        check("<b>x</b>", H, "&lt;b&gt;x&lt;/b&gt;");
        check(
            "<a href=\"http://e\">y</a>",
            H,
            "&lt;a href=&quot;http:·//e&quot;&gt;y&lt;/a&gt;",
        );
        check("a & b", H, "a &amp; b");
        check("@room @everyone", H, "@·room @·everyone");
        check("*not bold* _x_", H, "*not bold* _x_");
    }

    #[test]
    fn slack_plain_text_only_needs_entities() {
        use Markup::SlackPlainText as P;
        check("<!channel> *b* a&b", P, "&lt;!channel&gt; *b* a&amp;b");
        check(
            "@everyone http://x [x](y)",
            P,
            "@·everyone http:·//x [x]·(y)",
        );
    }

    #[test]
    fn discord_markdown() {
        use Markup::Discord as D;
        check(
            "*b* _i_ ~s~ `c` ||x||",
            D,
            r"\*b\* \_i\_ \~s\~ \`c\` \|\|x\|\|",
        );
        check(
            "[x](http://evil.example)",
            D,
            r"\[x\]\(http:·//evil.example\)",
        );
        check(
            "# h\n> q\n- l\n-# small\n1. one",
            D,
            "\\# h\n\\> q\n\\- l\n\\-\\# small\n1\\. one",
        );
        check("a - b 1.5", D, "a - b 1.5");
        check(
            "<@123> <@&9> <#7> <t:1:R>",
            D,
            r"\<@·123\> \<@&9\> \<\#7\> \<t:1:R\>",
        );
        check("@everyone @here", D, "@·everyone @·here");
        check(r"C:\dir", D, r"C:\\dir");
    }

    #[test]
    fn teams_markdown_and_html() {
        use Markup::Teams as T;
        check(
            "<a href=x>y</a> & z",
            T,
            "&lt;a href=x&gt;y&lt;/a&gt; &amp; z",
        );
        check(
            "[x](http://evil.example)",
            T,
            "&#91;x&#93;(http:·//evil.example)",
        );
        check(
            "*b* _i_ `c` # h",
            T,
            "&#42;b&#42; &#95;i&#95; &#96;c&#96; &#35; h",
        );
        check(
            "- l\n2. two\n3) three",
            T,
            "&#45; l\n2&#46; two\n3&#41; three",
        );
        check("@everyone", T, "@·everyone");
    }

    #[test]
    fn every_markup_drops_control_and_direction_characters() {
        for m in [Markup::Plain, Markup::Slack, Markup::Discord, Markup::Teams] {
            check("a\u{1b}b\r\n\u{202E}c\u{7}\td", m, "ab\nc\td");
        }
    }

    #[test]
    fn header_values_are_one_bounded_ascii_line() {
        assert_eq!(
            header_value("Title\r\nX-Injected: 1", 250),
            "Title  X-Injected: 1"
        );
        assert_eq!(
            header_value("🔴 api died — again\n", 250),
            "api died  again"
        );
        let long = header_value(&"x".repeat(300), 250);
        assert_eq!(long.len(), 250);
        assert!(long.ends_with("..."));
        assert!(header_value("\u{202E}é", 10).is_empty());
    }
}
