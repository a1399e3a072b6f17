//! HTML parsing with scraper (html5ever): the page's main content becomes headings, paragraphs
//! and list items, while navigation, banners, footers, scripts, styles and forms are dropped.
//!
//! Owns: the rules for what counts as boilerplate and how elements map to blocks.

use scraper::{ElementRef, Html, Node};

use super::{collapse_whitespace, Block, BlockKind, ParsedDocument};

/// Elements whose content is never part of the document's text: code, styling, navigation,
/// page chrome, forms and embedded media.
const DROPPED: &[&str] = &[
    "script", "style", "noscript", "nav", "footer", "aside", "form", "svg", "iframe", "template", "head", "button",
    "select", "textarea", "object", "embed", "canvas", "audio", "video", "map",
];

/// ARIA roles of page chrome, which sites put on plain `div`s as often as on the semantic tags.
const DROPPED_ROLES: &[&str] = &["navigation", "banner", "contentinfo", "search", "complementary"];

/// Elements that flow inside a line of text; everything else starts and ends a block.
const INLINE: &[&str] = &[
    "a", "abbr", "b", "bdi", "bdo", "big", "br", "cite", "code", "data", "del", "dfn", "em", "font", "i", "img", "ins",
    "kbd", "label", "mark", "nobr", "q", "s", "samp", "small", "span", "strike", "strong", "sub", "sup", "time", "tt",
    "u", "var", "wbr",
];

/// Elements that read like sections of the page: a `header` inside them introduces that part
/// (often holding its heading) rather than being the site's banner.
const SECTIONING: &[&str] = &["article", "main", "section"];

pub(super) fn parse(text: &str) -> ParsedDocument {
    let html = Html::parse_document(text);
    let root = content_root(&html);
    let mut walker = Walker::default();
    walker.walk_element(root, &BlockKind::Paragraph);
    walker.flush(&BlockKind::Paragraph);
    let title = page_title(&html).or_else(|| {
        walker.blocks.iter().find(|block| block.kind == BlockKind::Heading { level: 1 }).map(|block| block.text.clone())
    });
    ParsedDocument { title, blocks: walker.blocks }
}

/// Where the content lives: `<main>` (or `role="main"`) if the page marks it, else the one
/// `<article>`, else the body. Several articles usually mean a listing, where all of them count.
fn content_root(html: &Html) -> ElementRef<'_> {
    let document = html.root_element();
    let mut body = None;
    let mut articles = Vec::new();
    for element in document.descendent_elements() {
        let name = element.value().name();
        if name == "main" || element.value().attr("role").is_some_and(|role| role.eq_ignore_ascii_case("main")) {
            if !is_inside_dropped(element) {
                return element;
            }
        } else if name == "article" {
            articles.push(element);
        } else if name == "body" && body.is_none() {
            body = Some(element);
        }
    }
    match articles.as_slice() {
        [article] if !is_inside_dropped(*article) => *article,
        _ => body.unwrap_or(document),
    }
}

/// The `<title>` element's text, if the page has a non-empty one.
fn page_title(html: &Html) -> Option<String> {
    html.root_element()
        .descendent_elements()
        // An SVG's <title> is a tooltip, not the page's title.
        .find(|element| {
            element.value().name() == "title"
                && !element.ancestors().filter_map(ElementRef::wrap).any(|a| a.value().name() == "svg")
        })
        .map(|title| collapse_whitespace(&title.text().collect::<String>()))
        .filter(|title| !title.is_empty())
}

fn is_dropped(element: ElementRef<'_>) -> bool {
    let value = element.value();
    let name = value.name();
    if DROPPED.contains(&name) {
        return true;
    }
    if name == "header"
        && !element.ancestors().filter_map(ElementRef::wrap).any(|a| SECTIONING.contains(&a.value().name()))
    {
        return true;
    }
    if value.attr("hidden").is_some() || value.attr("aria-hidden").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return true;
    }
    value.attr("role").is_some_and(|role| DROPPED_ROLES.iter().any(|dropped| role.eq_ignore_ascii_case(dropped)))
}

fn is_inside_dropped(element: ElementRef<'_>) -> bool {
    element.ancestors().filter_map(ElementRef::wrap).any(is_dropped)
}

/// The block an element's text forms, given the kind of text around it; `None` for pure
/// containers (div, section, table, ul…), whose loose text takes the surrounding kind.
fn block_kind(name: &str, context: &BlockKind) -> Option<BlockKind> {
    let level = match name {
        "h1" => 1,
        "h2" => 2,
        "h3" => 3,
        "h4" => 4,
        "h5" => 5,
        "h6" => 6,
        "li" => return Some(BlockKind::ListItem),
        // Inside a list item, a paragraph is still part of the item.
        "p" | "blockquote" | "pre" | "td" | "th" | "dd" | "dt" | "caption" | "figcaption" | "summary" => {
            return Some(context.clone())
        }
        _ => return None,
    };
    Some(BlockKind::Heading { level })
}

/// Walks the element tree, gathering inline text until a block boundary ends it.
#[derive(Default)]
struct Walker {
    blocks: Vec<Block>,
    loose: String,
}

impl Walker {
    /// Turns the text gathered so far into a block of the given kind.
    fn flush(&mut self, kind: &BlockKind) {
        let text = collapse_whitespace(&self.loose);
        self.loose.clear();
        if !text.is_empty() {
            self.blocks.push(Block::new(kind.clone(), text));
        }
    }

    fn walk_children(&mut self, element: ElementRef<'_>, context: &BlockKind) {
        for child in element.children() {
            match child.value() {
                Node::Text(text) => self.loose.push_str(text),
                Node::Element(_) => {
                    if let Some(child) = ElementRef::wrap(child) {
                        self.walk_element(child, context);
                    }
                }
                _ => {}
            }
        }
    }

    fn walk_element(&mut self, element: ElementRef<'_>, context: &BlockKind) {
        if is_dropped(element) {
            // What surrounded the dropped element must not run together.
            self.loose.push(' ');
            return;
        }
        let name = element.value().name();
        if INLINE.contains(&name) {
            if name == "br" {
                self.loose.push(' ');
            }
            self.walk_children(element, context);
            return;
        }
        // A block-level element ends the loose text before it, which belongs to the parent.
        self.flush(context);
        let inner = block_kind(name, context).unwrap_or_else(|| context.clone());
        if name == "pre" {
            let text = preformatted_text(element);
            if !text.is_empty() {
                self.blocks.push(Block::new(inner, text));
            }
            return;
        }
        self.walk_children(element, &inner);
        self.flush(&inner);
    }
}

/// Text of a `<pre>` with its line structure kept (code reads badly as one line), minus the
/// trailing spaces and surrounding blank lines that carry nothing.
fn preformatted_text(element: ElementRef<'_>) -> String {
    let mut raw = String::new();
    collect_text(element, &mut raw);
    let lines: Vec<&str> = raw.lines().map(str::trim_end).collect();
    lines.join("\n").trim_matches('\n').to_string()
}

fn collect_text(element: ElementRef<'_>, out: &mut String) {
    for child in element.children() {
        match child.value() {
            Node::Text(text) => out.push_str(text),
            Node::Element(_) => {
                if let Some(child) = ElementRef::wrap(child) {
                    if !is_dropped(child) {
                        collect_text(child, out);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse as parse_bytes, Format, ParseLimits};
    use super::*;

    fn kinds_and_texts(document: &ParsedDocument) -> Vec<(BlockKind, &str)> {
        document.blocks.iter().map(|block| (block.kind.clone(), block.text.as_str())).collect()
    }

    const PAGE: &str = r#"<!DOCTYPE html>
<html><head><title> Widget   manual </title><style>body { color: red }</style>
<script>var tracking = "do not index";</script></head>
<body>
<header><a href="/">Home</a><h1>Site banner heading</h1></header>
<nav><ul><li>Products</li><li>About</li></ul></nav>
<div role="navigation">Breadcrumbs here</div>
<div class="content">
  <h1>Getting <em>started</em></h1>
  Loose intro text in a div.
  <p>First   paragraph
     over lines.</p>
  <h2>Steps</h2>
  <ul><li>Unpack</li><li>Plug in<ul><li>nested</li></ul></li></ul>
  <pre>fn main() {
    run();
}</pre>
  <table><tr><td>Cell A</td><td>Cell B</td></tr></table>
  <dl><dt>Term</dt><dd>Definition</dd></dl>
  <blockquote>A quote.</blockquote>
  <noscript>Enable JavaScript</noscript>
  <form><label>Email</label><input name="e"></form>
  <aside>Related links</aside>
</div>
<footer>Copyright 2024</footer>
<script>console.log("bye")</script>
</body></html>"#;

    #[test]
    fn boilerplate_is_dropped_and_headings_kept() {
        let document = parse(PAGE);
        assert_eq!(document.title.as_deref(), Some("Widget manual"));
        assert_eq!(
            kinds_and_texts(&document),
            vec![
                (BlockKind::Heading { level: 1 }, "Getting started"),
                (BlockKind::Paragraph, "Loose intro text in a div."),
                (BlockKind::Paragraph, "First paragraph over lines."),
                (BlockKind::Heading { level: 2 }, "Steps"),
                (BlockKind::ListItem, "Unpack"),
                (BlockKind::ListItem, "Plug in"),
                (BlockKind::ListItem, "nested"),
                (BlockKind::Paragraph, "fn main() {\n    run();\n}"),
                (BlockKind::Paragraph, "Cell A"),
                (BlockKind::Paragraph, "Cell B"),
                (BlockKind::Paragraph, "Term"),
                (BlockKind::Paragraph, "Definition"),
                (BlockKind::Paragraph, "A quote."),
            ]
        );
        let all: String = document.blocks.iter().map(|block| block.text.as_str()).collect();
        for boilerplate in
            ["tracking", "Home", "Products", "Breadcrumbs", "Copyright", "JavaScript", "Email", "Related"]
        {
            assert!(!all.contains(boilerplate), "{boilerplate} leaked into {all}");
        }
    }

    #[test]
    fn main_content_is_preferred() {
        let page = "<html><body><div>Sidebar promo</div><main><header><h1>Article title</h1></header>\
                    <p>Body text.</p><nav>Next page</nav></main><div>More promo</div></body></html>";
        let document = parse(page);
        // Without a <title>, the first h1 is the title.
        assert_eq!(document.title.as_deref(), Some("Article title"));
        assert_eq!(
            kinds_and_texts(&document),
            vec![(BlockKind::Heading { level: 1 }, "Article title"), (BlockKind::Paragraph, "Body text.")]
        );

        let page = "<body><p>Teaser</p><article><h2>Only article</h2><p>Its text.</p></article></body>";
        assert_eq!(parse(page).blocks.len(), 2);
    }

    #[test]
    fn list_items_with_paragraphs_stay_list_items() {
        let document = parse("<ol><li><p>Step one</p><p>details</p></li><li>Step <b>two</b></li></ol>");
        assert_eq!(
            kinds_and_texts(&document),
            vec![
                (BlockKind::ListItem, "Step one"),
                (BlockKind::ListItem, "details"),
                (BlockKind::ListItem, "Step two"),
            ]
        );
    }

    #[test]
    fn html_files_parse_through_the_entry_point() {
        let limits = ParseLimits::default();
        let document = parse_bytes(b"<p>Caf\xe9 &amp; cr&egrave;me</p>", Format::Html, &limits).unwrap();
        assert_eq!(document.blocks[0].text, "Café & crème");
        let only_chrome = b"<html><body><nav>Menu</nav><script>x()</script><footer>(c)</footer></body></html>";
        assert!(matches!(parse_bytes(only_chrome, Format::Html, &limits), Err(super::super::ParseError::Empty)));
    }
}
