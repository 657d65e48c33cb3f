// The log-in page: carry ?next= into the form and show why we are here. No captured data here.
const params = new URLSearchParams(location.search);
const next = params.get("next");
if (next && next.startsWith("/") && !next.startsWith("//")) {
  document.getElementById("next").value = next;
}
if (params.get("error")) document.getElementById("login-error").hidden = false;
if (params.get("out")) document.getElementById("login-out").hidden = false;
