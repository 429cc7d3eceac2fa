#!/usr/bin/env python3
"""A terminal transcript (text with ANSI colour codes) on stdin, drawn as an SVG terminal window on stdout.

Only what our output uses: SGR codes for bold, dim, the 8 colours and their bright forms, and resets. Lines that
start with "$ " are drawn as prompts (a comment after four spaces and "#" in grey). No fonts are embedded: the viewer's monospace font draws the text.
Usage: scripts/term2svg.py TITLE < transcript > picture.svg
"""
import html
import re
import sys

COLOURS = {30: "#6e7681", 31: "#ff7b72", 32: "#7ee787", 33: "#e3b341", 34: "#79c0ff", 35: "#d2a8ff", 36: "#76e3ea",
           37: "#e6edf3"}
COLOURS.update({code + 60: colour for code, colour in COLOURS.items()})
FOREGROUND, BACKGROUND, PROMPT = "#e6edf3", "#0d1117", "#7ee787"
FONT_SIZE, CHAR_WIDTH, LINE_HEIGHT, PAD, TOP = 14, 8.43, 19, 16, 40
SGR = re.compile(r"\x1b\[([0-9;]*)m")


def spans(line):
    """(text, colour, bold, dim) runs of one line."""
    colour, bold, dim, at = None, False, False, 0
    for match in SGR.finditer(line):
        if match.start() > at:
            yield line[at:match.start()], colour, bold, dim
        for code in [int(c) for c in match.group(1).split(";") if c] or [0]:
            if code == 0:
                colour, bold, dim = None, False, False
            elif code == 1:
                bold = True
            elif code == 2:
                dim = True
            elif code == 22:
                bold = dim = False
            elif code == 39:
                colour = None
            elif code in COLOURS:
                colour = COLOURS[code]
        at = match.end()
    if at < len(line):
        yield line[at:], colour, bold, dim


def main():
    title = sys.argv[1] if len(sys.argv) > 1 else "terminal"
    lines = sys.stdin.read().rstrip("\n").split("\n")
    columns = max(len(SGR.sub("", line)) for line in lines)
    width = round(2 * PAD + columns * CHAR_WIDTH)
    height = TOP + PAD + len(lines) * LINE_HEIGHT
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
        f' role="img" aria-label="{html.escape(title)}">',
        f'<rect width="{width}" height="{height}" rx="8" fill="{BACKGROUND}"/>',
        '<circle cx="20" cy="18" r="6" fill="#ff5f57"/><circle cx="40" cy="18" r="6" fill="#febc2e"/>'
        '<circle cx="60" cy="18" r="6" fill="#28c840"/>',
        f'<text x="{width / 2}" y="23" fill="#8b949e" font-family="sans-serif" font-size="13"'
        f' text-anchor="middle">{html.escape(title)}</text>',
        f'<g font-family="ui-monospace, SFMono-Regular, Menlo, Consolas, \'DejaVu Sans Mono\', monospace"'
        f' font-size="{FONT_SIZE}" fill="{FOREGROUND}" xml:space="preserve">',
    ]
    for number, line in enumerate(lines):
        y = TOP + PAD + number * LINE_HEIGHT
        parts = []
        if line.startswith("$ "):
            command, hash_mark, comment = SGR.sub("", line[2:]).partition("    #")
            parts.append(f'<tspan fill="{PROMPT}">$ </tspan><tspan font-weight="bold">'
                         f'{html.escape(command, quote=False)}</tspan>')
            if hash_mark:
                parts.append(f'<tspan fill="#8b949e">{html.escape(hash_mark + comment, quote=False)}</tspan>')
        else:
            for text, colour, bold, dim in spans(line):
                attributes = ""
                if colour:
                    attributes += f' fill="{colour}"'
                if bold:
                    attributes += ' font-weight="bold"'
                if dim:
                    attributes += ' opacity="0.6"'
                text = html.escape(text, quote=False)
                parts.append(f"<tspan{attributes}>{text}</tspan>" if attributes else text)
        out.append(f'<text x="{PAD}" y="{y}" textLength="{round(len(SGR.sub("", line)) * CHAR_WIDTH)}"'
                   f' lengthAdjust="spacingAndGlyphs">{"".join(parts)}</text>' if line else "")
    out.append("</g></svg>")
    print("\n".join(part for part in out if part))


if __name__ == "__main__":
    main()
