// @vitest-environment happy-dom
import { describe, expect, test } from "vitest";

import { renderMarkdown, safeHref } from "./markdown.ts";

/** The reply as the reader sees it: rendered into a detached container. */
function render(markdown: string): HTMLElement {
  const container = document.createElement("div");
  container.appendChild(renderMarkdown(markdown, document));
  return container;
}

function only<K extends keyof HTMLElementTagNameMap>(container: HTMLElement, selector: K): HTMLElementTagNameMap[K] {
  const found = container.querySelectorAll(selector);
  expect(found).toHaveLength(1);
  return found[0] as HTMLElementTagNameMap[K];
}

/** `markdown` shows as `text` alone: nothing in it matches `selector` (the link or image was dropped, its words kept). */
function expectOnlyText(markdown: string, selector: string, text: string): void {
  const container = render(markdown);
  expect(container.querySelector(selector)).toBeNull();
  expect(container.textContent).toBe(text);
}

/** Every attribute in the output whose name could run script (`onerror`, `onclick`, ...). */
function eventHandlerAttributes(container: HTMLElement): string[] {
  return [...container.querySelectorAll("*")].flatMap((node) =>
    [...node.attributes].filter((attribute) => attribute.name.toLowerCase().startsWith("on")).map((attribute) => attribute.name),
  );
}

describe("blocks", () => {
  test("paragraphs become one <p> each", () => {
    const container = render("First paragraph.\n\nSecond one.");
    expect([...container.children].map((node) => [node.tagName, node.textContent])).toEqual([
      ["P", "First paragraph."],
      ["P", "Second one."],
    ]);
  });

  test("headings keep their level and their inline formatting", () => {
    const container = render("# Title\n\n### Part *one*");
    expect(only(container, "h1").textContent).toBe("Title");
    const part = only(container, "h3");
    expect(part.textContent).toBe("Part one");
    expect(part.querySelector("em")?.textContent).toBe("one");
  });

  test("unordered and ordered lists, with the start number of an ordered list", () => {
    const container = render("- apples\n- pears\n\nthen\n\n3. third\n4. fourth");
    const bullets = only(container, "ul");
    expect([...bullets.querySelectorAll("li")].map((item) => item.textContent)).toEqual(["apples", "pears"]);
    const numbered = only(container, "ol");
    expect(numbered.getAttribute("start")).toBe("3");
    expect([...numbered.querySelectorAll("li")].map((item) => item.textContent)).toEqual(["third", "fourth"]);
  });

  test("an ordered list from 1 has no start attribute", () => {
    expect(only(render("1. one\n2. two"), "ol").hasAttribute("start")).toBe(false);
  });

  test.each([
    ["tight", "- [x] done\n- [ ] todo"],
    ["loose", "- [x] done\n\n- [ ] todo"],
  ])("%s task list items show a checked or an empty box on the line of their text", (_what, markdown) => {
    const items = [...render(markdown).querySelectorAll("li")];
    expect(items.map((item) => [item.textContent, item.querySelectorAll("p").length])).toEqual([
      ["☑ done", 1],
      ["☐ todo", 1],
    ]);
  });

  test("tables: header cells, body cells, alignment and inline formatting inside cells", () => {
    const container = render("| Name | Age |\n| :--- | ---: |\n| **Ann** | 3 |\n| Bob | `4` |");
    const table = only(container, "table");
    expect([...table.querySelectorAll("thead th")].map((cell) => cell.textContent)).toEqual(["Name", "Age"]);
    const rows = [...table.querySelectorAll("tbody tr")].map((row) => [...row.querySelectorAll("td")].map((cell) => cell.textContent));
    expect(rows).toEqual([
      ["Ann", "3"],
      ["Bob", "4"],
    ]);
    expect(table.querySelector("tbody td strong")?.textContent).toBe("Ann");
    expect(table.querySelector("tbody td code")?.textContent).toBe("4");
    const age = table.querySelectorAll<HTMLElement>("thead th")[1];
    expect(age?.style.textAlign).toBe("right");
  });

  test("blockquotes hold their paragraphs", () => {
    const quote = only(render("> Quoted line\n> and more"), "blockquote");
    expect(quote.querySelector("p")?.textContent).toBe("Quoted line\nand more");
  });

  test("a thematic break becomes <hr>", () => {
    only(render("above\n\n---\n\nbelow"), "hr");
  });

  test("two trailing spaces make a line break", () => {
    const paragraph = only(render("line one  \nline two"), "p");
    expect(paragraph.querySelector("br")).not.toBeNull();
    expect(paragraph.textContent).toBe("line oneline two");
  });
});

describe("inline formatting", () => {
  test("bold, emphasis and strikethrough", () => {
    const container = render("**bold** and *em* and ~~gone~~");
    expect(only(container, "strong").textContent).toBe("bold");
    expect(only(container, "em").textContent).toBe("em");
    expect(only(container, "del").textContent).toBe("gone");
    expect(container.textContent).toBe("bold and em and gone");
  });

  test("inline code is a <code> outside any <pre>", () => {
    const code = only(render("Run `npm install` first."), "code");
    expect(code.textContent).toBe("npm install");
    expect(code.closest("pre")).toBeNull();
  });

  test("inline code shows its characters literally: markup stays text, entities are not decoded", () => {
    const container = render("Use `<b>x</b>` and write `&amp;` for an ampersand.");
    expect(container.querySelector("b")).toBeNull();
    expect([...container.querySelectorAll("code")].map((code) => code.textContent)).toEqual(["<b>x</b>", "&amp;"]);
  });
});

describe("fenced code blocks", () => {
  test("show the code verbatim with its language and a Copy button holding the code", () => {
    const source = "const ok = 1 < 2 && 3 > 2;\nconsole.log('<b>');";
    const container = render(`Here:\n\n\`\`\`js\n${source}\n\`\`\``);
    const block = only(container, "pre");
    expect(block.querySelector("code")?.textContent).toBe(source);
    expect(container.querySelector(".code-language")?.textContent).toBe("js");
    const copy = only(container, "button");
    expect(copy.textContent).toBe("Copy");
    expect(copy.type).toBe("button");
    expect(copy.dataset["code"]).toBe(source);
    expect(copy.getAttribute("aria-label")).toBe("Copy js code");
    expect(container.querySelector("b")).toBeNull();
  });

  test("a script inside a code block is shown, not run", () => {
    const container = render("```html\n<script>alert(1)</script>\n```");
    expect(container.querySelector("script")).toBeNull();
    expect(only(container, "code").textContent).toBe("<script>alert(1)</script>");
  });

  test("a block without a language has a plain Copy code label", () => {
    const container = render("```\nplain text\n```");
    expect(only(container, "button").getAttribute("aria-label")).toBe("Copy code");
    expect(container.querySelector(".code-language")?.textContent).toBe("");
  });
});

describe("raw HTML from the model is shown as text", () => {
  // An image with an onerror handler (alone and between words), a script, a javascript: anchor, an
  // iframe, an svg with onload, bold tags, a details element, and a script kept character for character.
  test.each([
    "<img src=x onerror=alert(1)>",
    "Look: <img src=x onerror=alert(1)> here",
    "<script>alert(1)</script>",
    '<a href="javascript:alert(1)">click me</a>',
    '<iframe src="https://evil.test"></iframe>',
    "<svg onload=alert(1)></svg>",
    "<b>bold</b> text",
    "<details open ontoggle=alert(1)>x</details>",
    "Look <script>if (a &amp;&amp; b) go()</script> here",
  ])("%s", (html) => {
    const container = render(html);
    expect(container.querySelector("img, script, a, iframe, svg, b, details")).toBeNull();
    expect(eventHandlerAttributes(container)).toEqual([]);
    expect(container.textContent).toBe(html);
  });

  test("HTML inside link text stays text inside the link", () => {
    const container = render("[<img src=x onerror=alert(1)>](https://example.com)");
    expect(container.querySelector("img")).toBeNull();
    expect(only(container, "a").textContent).toBe("<img src=x onerror=alert(1)>");
  });
});

describe("links", () => {
  test.each([
    ["https", "https://example.com/docs?q=1"],
    ["http", "http://example.com/"],
    ["mailto", "mailto:help@example.com"],
  ])("%s links open in a new tab with rel=noopener noreferrer", (_what, href) => {
    const link = only(render(`See [the docs](${href}).`), "a");
    expect(link.getAttribute("href")).toBe(href);
    expect(link.target).toBe("_blank");
    expect(link.rel).toBe("noopener noreferrer");
    expect(link.textContent).toBe("the docs");
  });

  test("autolinks and bare URLs are links too", () => {
    const links = [...render("<https://auto.example> and www.example.com").querySelectorAll("a")];
    expect(links.map((link) => [link.getAttribute("href"), link.textContent, link.rel])).toEqual([
      ["https://auto.example/", "https://auto.example", "noopener noreferrer"],
      ["http://www.example.com/", "www.example.com", "noopener noreferrer"],
    ]);
  });

  test.each([
    ["javascript:", "javascript:alert(1)"],
    ["upper-case JavaScript:", "JaVaScRiPt:alert(document.cookie)"],
    ["data:", "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg=="],
    ["vbscript:", "vbscript:msgbox(1)"],
    ["file:", "file:///etc/passwd"],
    ["protocol-relative", "//evil.example/steal"],
    ["relative path", "/account/delete"],
    ["dot-relative path", "./here"],
    ["fragment", "#top"],
  ])("a %s target renders without a link, its words stay", (_what, href) => {
    expectOnlyText(`Please [click here](${href}) now.`, "a", "Please click here now.");
  });

  test("a reference-style link to javascript: is neutralised too", () => {
    expectOnlyText("[x]: javascript:alert(1)\n\nPress [x] to win.", "a", "Press x to win.");
  });
});

describe("images never load", () => {
  test("an image becomes a link to it, named by its alt text", () => {
    const container = render("Diagram: ![the diagram](https://example.com/diagram.png)");
    expect(container.querySelector("img")).toBeNull();
    const link = only(container, "a");
    expect(link.getAttribute("href")).toBe("https://example.com/diagram.png");
    expect(link.textContent).toBe("the diagram");
    expect(link.rel).toBe("noopener noreferrer");
    expect(link.target).toBe("_blank");
  });

  test("an image with a javascript: source leaves only its alt text", () => {
    expectOnlyText("![pic](javascript:alert(1))", "img, a", "pic");
  });

  test("an image without alt text is a link showing its URL", () => {
    const link = only(render("![](https://example.com/pixel.gif)"), "a");
    expect(link.textContent).toBe("https://example.com/pixel.gif");
  });
});

describe("entities and escapes show as the characters they stand for", () => {
  test.each([
    ["a &amp; b", "a & b"],
    ["1 &lt; 2 &gt; 0", "1 < 2 > 0"],
    ["say &quot;hi&quot;", 'say "hi"'],
    ["&copy; 2025", "© 2025"],
    ["Tom & Jerry &#169;", "Tom & Jerry ©"],
  ])("%j", (markdown, shown) => {
    expect(render(markdown).textContent).toBe(shown);
  });

  test("backslash escapes show the character and make no element", () => {
    const container = render("\\<b\\>not bold\\</b\\> and \\*not em\\*");
    expect(container.querySelector("b, em")).toBeNull();
    expect(container.textContent).toBe("<b>not bold</b> and *not em*");
  });

  test("plain < > & \" ' stay as typed", () => {
    expect(render("if a < b && c > d then \"yes\" or 'no'").textContent).toBe("if a < b && c > d then \"yes\" or 'no'");
  });
});

describe("safeHref", () => {
  test.each([
    ["https://example.com/a?b=1#c", "https://example.com/a?b=1#c"],
    ["http://example.com", "http://example.com/"],
    ["HTTPS://EXAMPLE.COM/Path", "https://example.com/Path"],
    ["mailto:someone@example.com", "mailto:someone@example.com"],
  ])("keeps %j as %j", (href, kept) => {
    expect(safeHref(href)).toBe(kept);
  });

  test.each([
    "javascript:alert(1)",
    "JAVASCRIPT:alert(1)",
    " javascript:alert(1)",
    "java\tscript:alert(1)",
    "java\nscript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "file:///etc/passwd",
    "ftp://example.com/file",
    "//evil.example",
    "/relative",
    "relative/path",
    "#fragment",
    "",
    "not a url",
  ])("refuses %j", (href) => {
    expect(safeHref(href)).toBeUndefined();
  });
});
