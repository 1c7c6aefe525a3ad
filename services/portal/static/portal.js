// The little script the pages use; every page works without it.
// Ticking a facet applies it at once (the form's "Apply filters" button does the same without script).
document.addEventListener("change", (event) => {
  const box = event.target.closest("input[data-autosubmit]");
  if (box && box.form) box.form.requestSubmit();
});
