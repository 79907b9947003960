// What both pages share: an element by id, and an element made with its class, text and children.
"use strict";

const $ = (id) => document.getElementById(id);

// An element with its class and text; children appended.
function el(tag, cls, text, ...children) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = text;
  node.append(...children);
  return node;
}
