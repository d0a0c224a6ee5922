// Building elements from data. Text always goes in as text (never as HTML), so nothing a model
// or a request says can inject markup into the page.

/** el("td", {class: "num"}, "42") -> <td class="num">42</td>. Children: nodes, strings, nulls. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** Replace an element's children. */
export function fill(node, ...children) {
  node.replaceChildren(...children.filter((c) => c !== null && c !== undefined && c !== false));
}

/** A coloured state badge: loaded, loading, available, error... */
export function badge(state) {
  return el("span", { class: `badge badge-${state}` }, state);
}
