"""The technologist's web console: static page (index.html, console.css, console.js) served by
agent.api, and the thumbnail encoder for the last frame."""
