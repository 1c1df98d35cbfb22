// Loaded before the page is drawn, so a chosen theme shows without a flash.
try {
  const t = localStorage.getItem('sluice.theme');
  if (t === 'light' || t === 'dark') document.documentElement.dataset.theme = t;
} catch { /* storage blocked: follow the system setting */ }
