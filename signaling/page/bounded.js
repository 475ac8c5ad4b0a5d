// What a worker can make the page grow, bounded: the job log keeps its last lines, the
// error list its last entries, with repeats collapsed into one line with a count.

/** The job log keeps at most this many lines and this many characters (the last ones). */
export const LOG_MAX_LINES = 2000;
export const LOG_MAX_CHARS = 1_000_000;
/** The error list keeps at most this many entries (the last ones). */
export const ERRORS_MAX = 50;

const logChars = new WeakMap();

/** Append `line` to the log element `pre` (one text node per line, shown as text, never
 *  as markup), dropping the oldest lines beyond the bounds; pre.dataset.dropped counts
 *  the lines dropped since clearLog. */
export function appendLine(pre, line, { maxLines = LOG_MAX_LINES, maxChars = LOG_MAX_CHARS } = {}) {
  const text = `${line}\n`;
  pre.append(text);
  let chars = (logChars.get(pre) ?? 0) + text.length;
  let dropped = Number(pre.dataset.dropped ?? 0);
  while (pre.childNodes.length > 1 && (pre.childNodes.length > maxLines || chars > maxChars)) {
    chars -= pre.firstChild.textContent.length;
    pre.firstChild.remove();
    dropped += 1;
  }
  logChars.set(pre, chars);
  pre.dataset.dropped = String(dropped);
}
/** Empty the log element. */
export function clearLog(pre) {
  pre.replaceChildren();
  logChars.set(pre, 0);
  pre.dataset.dropped = "0";
}

/** Add an error entry (li with data-code) to the list `ul`: the same text as the last
 *  entry only counts it again ("text (×3)"); beyond `max` entries the oldest go
 *  (ul.dataset.dropped counts them). Returns the entry. */
export function addError(ul, code, text, max = ERRORS_MAX) {
  const last = ul.lastElementChild;
  if (last && last.dataset.code === code && last.dataset.text === text) {
    const count = Number(last.dataset.count) + 1;
    last.dataset.count = String(count);
    last.textContent = `${text} (×${count})`;
    return last;
  }
  const li = document.createElement("li");
  Object.assign(li.dataset, { code, text, count: "1" });
  li.textContent = text;
  ul.append(li);
  while (ul.children.length > max) {
    ul.firstElementChild.remove();
    ul.dataset.dropped = String(Number(ul.dataset.dropped ?? 0) + 1);
  }
  return li;
}
