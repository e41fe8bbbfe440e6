// Flywheel's page helpers, evaluated in the page: finding elements the way a
// person would (visible, enabled, by CSS or by text) and scrolling them into
// view. Returns an object; the agent calls its functions by name.
(() => {
  const visible = (el) => {
    if (!el || !el.getBoundingClientRect) return false;
    const r = el.getBoundingClientRect();
    if (r.width <= 0 || r.height <= 0) return false;
    const s = getComputedStyle(el);
    return s.visibility !== 'hidden' && s.display !== 'none' && parseFloat(s.opacity || '1') > 0;
  };
  const enabled = (el) =>
    !(el.disabled || el.getAttribute('aria-disabled') === 'true' || (el.closest && el.closest('fieldset[disabled]')));
  const area = (el) => { const r = el.getBoundingClientRect(); return r.width * r.height; };
  const text = (el) => ((el.innerText !== undefined ? el.innerText : el.textContent) || '').trim();
  const byText = (want) => {
    want = want.trim();
    const exact = [], partial = [];
    for (const el of document.querySelectorAll('body, body *')) {
      if (!visible(el)) continue;
      const t = text(el);
      if (!t) continue;
      if (t === want) exact.push(el);
      else if (t.includes(want)) partial.push(el);
    }
    const smallest = (list) => list.length ? list.reduce((a, b) => (area(b) < area(a) ? b : a)) : null;
    return smallest(exact) || smallest(partial);
  };
  // The first visible match of a selector, else the first match at all.
  const bySelector = (selector) => {
    const all = document.querySelectorAll(selector);
    for (const el of all) if (visible(el)) return el;
    return all[0] || null;
  };
  const resolve = (target) => (target.selector !== undefined && target.selector !== null)
    ? bySelector(target.selector) : byText(target.text);
  const describe = (el) => ({ tag: el.tagName.toLowerCase(), text: text(el).slice(0, 80) });

  return {
    // {state: ok|missing|hidden|disabled|error, x, y, ...}; marks the element for follow-up calls.
    locate(target, needVisible, needEnabled) {
      let el;
      try { el = resolve(target); } catch (e) { return { state: 'error', message: 'invalid selector: ' + e.message }; }
      if (!el) return { state: 'missing' };
      if (needVisible && !visible(el)) return { state: 'hidden' };
      if (needEnabled && !enabled(el)) return { state: 'disabled' };
      if (needVisible) el.scrollIntoView({ block: 'center', inline: 'center', behavior: 'instant' });
      const r = el.getBoundingClientRect();
      window.__flywheelTarget = el;
      return Object.assign({ state: 'ok', x: r.left + r.width / 2, y: r.top + r.height / 2 }, describe(el));
    },
    // Until unguardClick(), mouse events that land outside the marked
    // element (the page moved under the pointer since it was located) are
    // stopped and noted, so that a click never acts on another element.
    guardClick() {
      const target = window.__flywheelTarget;
      window.__flywheelMissed = false;
      const check = (ev) => {
        if (!target || (ev.target instanceof Node && target.contains(ev.target))) return;
        window.__flywheelMissed = true;
        ev.preventDefault();
        ev.stopImmediatePropagation();
      };
      const types = ['pointerdown', 'mousedown', 'pointerup', 'mouseup', 'click', 'dblclick', 'auxclick', 'contextmenu'];
      for (const type of types) window.addEventListener(type, check, { capture: true });
      window.__flywheelUnguard = () => {
        for (const type of types) window.removeEventListener(type, check, { capture: true });
        return window.__flywheelMissed ? 'missed' : 'ok';
      };
      return 'ok';
    },
    unguardClick() {
      return window.__flywheelUnguard ? window.__flywheelUnguard() : 'ok';
    },
    // Focuses the marked element and selects its content (so typing replaces it).
    prepareTyping(append) {
      const el = window.__flywheelTarget;
      if (!el) return 'no element';
      el.focus();
      if (append) {
        if (typeof el.setSelectionRange === 'function' && typeof el.value === 'string') {
          try { el.setSelectionRange(el.value.length, el.value.length); } catch (e) {}
        }
      } else if (typeof el.select === 'function' && typeof el.value === 'string') {
        el.select();
      } else if (el.isContentEditable) {
        document.execCommand('selectAll', false, null);
      }
      return 'ok';
    },
    clearMarked() {
      const el = window.__flywheelTarget;
      if (el && typeof el.value === 'string') {
        el.value = '';
        el.dispatchEvent(new Event('input', { bubbles: true }));
        el.dispatchEvent(new Event('change', { bubbles: true }));
      }
    },
    selectOption(value, label) {
      const el = window.__flywheelTarget;
      if (!el || el.tagName !== 'SELECT') return { ok: false, message: 'the element is not a <select>' };
      const option = Array.from(el.options).find((o) => (value !== null ? o.value === value : o.label.trim() === label.trim() || o.text.trim() === label.trim()));
      if (!option) {
        const choices = Array.from(el.options).map((o) => (value !== null ? o.value : o.text.trim()));
        return { ok: false, message: 'no option ' + JSON.stringify(value !== null ? value : label) + '; the options are ' + JSON.stringify(choices) };
      }
      el.value = option.value;
      el.dispatchEvent(new Event('input', { bubbles: true }));
      el.dispatchEvent(new Event('change', { bubbles: true }));
      return { ok: true, value: option.value, label: option.text.trim() };
    },
    isChecked() {
      const el = window.__flywheelTarget;
      return !!(el && (el.checked || el.getAttribute('aria-checked') === 'true'));
    },
    extract(selector, attr, all) {
      const read = (el) => (attr ? el.getAttribute(attr) : text(el));
      if (all) return { state: 'ok', value: Array.from(document.querySelectorAll(selector)).map(read) };
      const el = bySelector(selector);
      if (!el) return { state: 'missing' };
      if (!attr && !visible(el)) return { state: 'hidden' };
      return { state: 'ok', value: read(el) };
    },
    hasText(want) { return (document.body ? document.body.innerText : '').includes(want); },
    isVisible(selector) { try { return visible(bySelector(selector)); } catch (e) { return false; } },
    fullSize() {
      const d = document.documentElement, b = document.body || d;
      return { width: Math.max(d.scrollWidth, b.scrollWidth, d.clientWidth), height: Math.max(d.scrollHeight, b.scrollHeight, d.clientHeight) };
    },
  };
})()
