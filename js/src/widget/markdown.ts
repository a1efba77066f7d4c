import { lexer, type Token, type Tokens } from "marked";

/**
 * Markdown from the model, as DOM nodes built one by one: text goes in with
 * `textContent`, never as HTML, so a reply cannot inject markup or script
 * (raw HTML in the reply shows as text). Links keep only http(s) and mailto
 * targets and open with `rel="noopener noreferrer"`; images become links, so
 * a reply cannot load a tracking pixel. Code blocks get a copy button.
 */
export function renderMarkdown(markdown: string, document: Document): DocumentFragment {
  const fragment = document.createDocumentFragment();
  appendBlocks(fragment, lexer(markdown, { gfm: true }), document);
  return fragment;
}

const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);

/** The URL if it is absolute and http(s) or mailto, else undefined (`javascript:` and friends). */
export function safeHref(href: string): string | undefined {
  try {
    const url = new URL(href);
    return SAFE_PROTOCOLS.has(url.protocol) ? url.href : undefined;
  } catch {
    return undefined;
  }
}

function element<K extends keyof HTMLElementTagNameMap>(
  document: Document,
  tag: K,
  className?: string,
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

function appendBlocks(parent: Node, tokens: readonly Token[], document: Document): void {
  for (const token of tokens) {
    const block = renderBlock(token as Tokens.Generic, document);
    if (block) parent.appendChild(block);
  }
}

function renderBlock(token: Tokens.Generic, document: Document): Node | undefined {
  switch (token.type) {
    case "paragraph":
    case "text": {
      const paragraph = element(document, "p");
      appendInline(paragraph, (token.tokens as Token[] | undefined) ?? [token as Token], document);
      return paragraph;
    }
    case "heading": {
      const depth = Math.min(6, Math.max(1, Number(token["depth"]) || 1));
      const heading = element(document, `h${depth}` as "h1");
      appendInline(heading, token.tokens ?? [], document);
      return heading;
    }
    case "code":
      return codeBlock(String(token["text"] ?? ""), typeof token["lang"] === "string" ? token["lang"] : "", document);
    case "blockquote": {
      const quote = element(document, "blockquote");
      appendBlocks(quote, token.tokens ?? [], document);
      return quote;
    }
    case "list": {
      const list = token as unknown as Tokens.List;
      const node = element(document, list.ordered ? "ol" : "ul");
      if (list.ordered && typeof list.start === "number" && list.start !== 1) node.setAttribute("start", String(list.start));
      for (const item of list.items) {
        const entry = element(document, "li");
        appendBlocks(entry, item.tokens.filter((child) => child.type !== "checkbox"), document);
        if (item.task) {
          // The box goes in front of the item's first line, tight list or loose.
          const first = entry.firstElementChild?.tagName === "P" ? entry.firstElementChild : entry;
          first.insertBefore(document.createTextNode(item.checked ? "☑ " : "☐ "), first.firstChild);
        }
        node.appendChild(entry);
      }
      return node;
    }
    case "table":
      return table(token as unknown as Tokens.Table, document);
    case "hr":
      return element(document, "hr");
    case "space":
    case "def":
      return undefined;
    default: {
      // Raw HTML blocks and anything unknown: shown as the text they are.
      const paragraph = element(document, "p");
      paragraph.textContent = String(token["text"] ?? token.raw ?? "");
      return paragraph;
    }
  }
}

function appendInline(parent: Node, tokens: readonly Token[], document: Document): void {
  for (const raw of tokens) {
    const token = raw as Tokens.Generic;
    switch (token.type) {
      case "strong":
      case "em":
      case "del": {
        const node = element(document, token.type === "strong" ? "strong" : token.type === "em" ? "em" : "del");
        appendInline(node, token.tokens ?? [], document);
        parent.appendChild(node);
        break;
      }
      case "codespan": {
        const code = element(document, "code");
        code.textContent = String(token["text"] ?? "");
        parent.appendChild(code);
        break;
      }
      case "br":
        parent.appendChild(element(document, "br"));
        break;
      case "link":
      case "image": {
        const href = safeHref(String(token["href"] ?? ""));
        if (!href) {
          // A link we will not follow: its words stay, the target goes.
          appendInline(parent, token.tokens ?? [], document);
          break;
        }
        const link = element(document, "a");
        link.href = href;
        link.target = "_blank";
        link.rel = "noopener noreferrer";
        if (token.type === "image") link.textContent = String(token["text"] || href);
        else appendInline(link, token.tokens ?? [], document);
        parent.appendChild(link);
        break;
      }
      case "checkbox":
        break; // a task item's box: drawn by its list item
      case "text":
        if (token.tokens?.length) appendInline(parent, token.tokens, document);
        else parent.appendChild(document.createTextNode(textOf(token)));
        break;
      default:
        // escape, inline html and the rest: their text, as text.
        parent.appendChild(document.createTextNode(textOf(token)));
    }
  }
}

function codeBlock(text: string, language: string, document: Document): HTMLElement {
  const figure = element(document, "div", "code-block");
  const bar = element(document, "div", "code-bar");
  const label = element(document, "span", "code-language");
  label.textContent = language.split(/\s/)[0] ?? "";
  const copy = element(document, "button", "copy");
  copy.type = "button";
  copy.textContent = "Copy";
  copy.setAttribute("aria-label", language ? `Copy ${label.textContent} code` : "Copy code");
  copy.dataset["code"] = text;
  bar.append(label, copy);
  const pre = element(document, "pre");
  const code = element(document, "code");
  code.textContent = text;
  pre.appendChild(code);
  figure.append(bar, pre);
  return figure;
}

function table(token: Tokens.Table, document: Document): HTMLElement {
  const wrapper = element(document, "div", "table");
  const node = element(document, "table");
  const head = element(document, "thead");
  const headRow = element(document, "tr");
  for (const cell of token.header) headRow.appendChild(tableCell("th", cell, document));
  head.appendChild(headRow);
  const body = element(document, "tbody");
  for (const row of token.rows) {
    const line = element(document, "tr");
    for (const cell of row) line.appendChild(tableCell("td", cell, document));
    body.appendChild(line);
  }
  node.append(head, body);
  wrapper.appendChild(node);
  return wrapper;
}

function tableCell(tag: "th" | "td", cell: Tokens.TableCell, document: Document): HTMLElement {
  const node = element(document, tag);
  if (cell.align) node.style.textAlign = cell.align;
  appendInline(node, cell.tokens, document);
  return node;
}

function textOf(token: Tokens.Generic): string {
  const text = String(token["text"] ?? token.raw ?? "");
  // marked leaves entities as written (`a &amp; b`), except text it escaped itself (inside raw HTML).
  return token["escaped"] ? text : decodeEntities(text);
}

const NAMED: Record<string, string> = {
  amp: "&", lt: "<", gt: ">", quot: '"', apos: "'", nbsp: "\u00a0", copy: "©", reg: "®", trade: "™",
  hellip: "…", mdash: "—", ndash: "–", laquo: "«", raquo: "»", ldquo: "“", rdquo: "”", lsquo: "‘",
  rsquo: "’", bull: "•", middot: "·", deg: "°", times: "×", divide: "÷", euro: "€", pound: "£",
  yen: "¥", cent: "¢", sect: "§", para: "¶", plusmn: "±", larr: "←", rarr: "→", uarr: "↑", darr: "↓",
};

/** HTML entities as characters: numeric ones and the common named ones (no HTML parser involved). */
export function decodeEntities(text: string): string {
  if (!text.includes("&")) return text;
  return text.replace(/&(#x[0-9a-f]{1,6}|#[0-9]{1,7}|[a-z]{2,8});/gi, (entity, body: string) => {
    if (body[0] === "#") {
      const code = body[1] === "x" || body[1] === "X" ? Number.parseInt(body.slice(2), 16) : Number(body.slice(1));
      return code > 0 && code <= 0x10ffff && !(code >= 0xd800 && code <= 0xdfff) ? String.fromCodePoint(code) : entity;
    }
    return NAMED[body] ?? entity;
  });
}
