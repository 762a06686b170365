/** The style sheet of preview pages: Discord's dark theme, roughly, at a width of 1000 px. */
export const PREVIEW_CSS = `
* { box-sizing: border-box; }
body { margin: 0; background: #313338; color: #dbdee1; font: 15px/1.375 "gg sans", "Noto Sans", "Helvetica Neue", Helvetica, Arial, sans-serif; width: 1000px; }
a { color: #00a8fc; text-decoration: none; }
.phase-head { background: #2b2d31; padding: 14px 20px 10px; border-bottom: 1px solid #1f2023; }
.phase-head h1 { margin: 6px 0 4px; font-size: 20px; color: #f2f3f5; }
.phase-head p { margin: 0; color: #b5bac1; }
nav { font-size: 13px; color: #949ba4; }
nav strong { color: #f2f3f5; }
.warning { color: #f0b232 !important; }
main { padding: 0 0 16px; }
.channel { border-bottom: 6px solid #1e1f22; padding-bottom: 10px; }
.channel-head { position: sticky; top: 0; background: #313338; border-bottom: 1px solid #26272b; padding: 10px 16px; font-weight: 600; color: #f2f3f5; box-shadow: 0 1px 0 rgba(0,0,0,.2); margin-bottom: 6px; }
.channel-head .hash { color: #80848e; font-size: 20px; margin-right: 4px; }
.message { padding: 2px 48px 2px 16px; margin-top: 14px; }
.message.grouped { margin-top: 0; }
.message.ephemeral { background: rgba(88,101,242,.07); border-left: 2px solid #5865f2; padding-left: 14px; }
.message.captured { background: rgba(240,178,50,.06); border-left: 2px solid #f0b232; padding-left: 14px; }
.note { color: #f0b232; font-size: 12px; margin: 0 0 4px 56px; font-style: italic; }
.row { display: flex; gap: 16px; }
.avatar { flex: 0 0 40px; width: 40px; height: 40px; border-radius: 50%; color: #fff; font-weight: 700; font-size: 15px; display: flex; align-items: center; justify-content: center; }
.avatar.small { flex: 0 0 16px; width: 16px; height: 16px; font-size: 7px; margin-right: 4px; }
.gutter-time { flex: 0 0 40px; width: 40px; color: transparent; font-size: 11px; }
.main { min-width: 0; flex: 1; }
.head { display: flex; align-items: baseline; gap: 6px; }
.author { color: #f2f3f5; font-weight: 600; }
.app-tag { background: #5865f2; color: #fff; font-size: 10px; font-weight: 700; padding: 1px 4px; border-radius: 3px; position: relative; top: -1px; }
.time { color: #949ba4; font-size: 12px; }
.invoked { display: flex; align-items: center; font-size: 13px; color: #b5bac1; margin: 0 0 2px 56px; position: relative; }
.invoked::before { content: ""; position: absolute; left: -36px; top: 8px; width: 30px; height: 10px; border-left: 2px solid #4e5058; border-top: 2px solid #4e5058; border-top-left-radius: 6px; }
.invoked .who { color: #f2f3f5; font-weight: 500; margin-right: 4px; }
.invoked .command { color: #00a8fc; margin-left: 4px; }
.invoked .options { color: #80848e; margin-left: 6px; font-size: 12px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; max-width: 620px; display: inline-block; }
.invoked .excerpt { color: #b5bac1; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; max-width: 700px; display: inline-block; }
.modal-before { font-size: 12px; color: #949ba4; margin-top: 4px; }
.content { white-space: normal; word-wrap: break-word; }
.content .line { min-height: 1.375em; }
.content h3, .content h4, .content h5 { margin: 8px 0 4px; color: #f2f3f5; }
.content h3 { font-size: 22px; } .content h4 { font-size: 19px; } .content h5 { font-size: 16px; }
.subtext { font-size: 12px; color: #949ba4; }
.edited { color: #949ba4; font-size: 10px; margin-left: 4px; }
code { background: #2b2d31; border: 1px solid #1e1f22; border-radius: 4px; padding: 0 3px; font: 13px/1.4 Consolas, "DejaVu Sans Mono", monospace; }
pre { background: #2b2d31; border: 1px solid #1e1f22; border-radius: 4px; padding: 8px; margin: 4px 0; font: 13px/1.4 Consolas, "DejaVu Sans Mono", monospace; white-space: pre-wrap; }
blockquote { margin: 2px 0; padding: 0 8px 0 12px; border-left: 4px solid #4e5058; }
ul { margin: 2px 0 2px 16px; padding: 0 0 0 8px; }
.mention { background: rgba(88,101,242,.3); color: #c9cdfb; border-radius: 3px; padding: 0 2px; font-weight: 500; }
.timestamp { background: rgba(255,255,255,.06); border-radius: 3px; padding: 0 2px; }
.spoiler { background: #1e1f22; color: #1e1f22; border-radius: 3px; padding: 0 2px; }
.thinking { color: #949ba4; font-style: italic; }
.ephemeral-note { font-size: 12px; color: #949ba4; margin-top: 4px; }
.ephemeral-note .dismiss { color: #00a8fc; }
.embed { display: flex; max-width: 520px; background: #2b2d31; border-left: 4px solid #1e1f22; border-radius: 4px; padding: 8px 16px 12px 12px; margin-top: 6px; gap: 12px; }
.embed-body { flex: 1; min-width: 0; }
.embed-author { font-size: 13px; font-weight: 600; color: #f2f3f5; margin-top: 4px; }
.embed-title { font-weight: 700; color: #f2f3f5; margin-top: 6px; }
.embed-description { font-size: 14px; margin-top: 6px; }
.embed-fields { display: grid; grid-template-columns: repeat(3, 1fr); gap: 8px; margin-top: 8px; }
.embed-field { grid-column: 1 / -1; font-size: 14px; }
.embed-field.inline { grid-column: auto; }
.embed-field-name { font-weight: 600; color: #f2f3f5; margin-bottom: 2px; }
.embed-image { display: block; max-width: 100%; max-height: 300px; border-radius: 4px; margin-top: 12px; }
.embed-thumb { width: 80px; height: 80px; object-fit: cover; border-radius: 4px; margin-top: 8px; }
.embed-footer { font-size: 12px; color: #b5bac1; margin-top: 8px; }
.images { display: flex; flex-wrap: wrap; gap: 4px; margin-top: 6px; max-width: 560px; }
.image { margin: 0; position: relative; }
.image img { display: block; max-width: 550px; max-height: 350px; width: auto; height: auto; border-radius: 8px; background: #2b2d31; }
.images.many .image img { max-width: 180px; max-height: 180px; }
.image figcaption { font-size: 11px; color: #80848e; max-width: 180px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.spoiler-image img { filter: blur(24px) brightness(.7); }
.spoiler-label { position: absolute; left: 50%; top: 45%; transform: translate(-50%,-50%); background: rgba(0,0,0,.6); color: #fff; font-weight: 700; font-size: 12px; padding: 4px 10px; border-radius: 12px; }
.file { display: inline-flex; gap: 10px; align-items: center; background: #2b2d31; border: 1px solid #1e1f22; border-radius: 8px; padding: 10px 14px; margin-top: 6px; min-width: 320px; }
.file-icon { font-size: 26px; }
.file-name { font-weight: 500; }
.file-size { font-size: 12px; color: #949ba4; }
.action-row { display: flex; flex-wrap: wrap; gap: 8px; margin-top: 8px; }
.btn { display: inline-flex; align-items: center; gap: 4px; height: 32px; padding: 2px 16px; border-radius: 8px; color: #fff; font-size: 14px; font-weight: 500; }
.btn.primary { background: #5865f2; } .btn.secondary { background: #4e5058; } .btn.success { background: #248046; } .btn.danger { background: #da373c; } .btn.premium { background: #8b5cf6; }
.btn.link-like { background: transparent; color: #f2f3f5; }
.btn.disabled { opacity: .5; cursor: not-allowed; }
.select { position: relative; background: #1e1f22; border: 1px solid #1e1f22; border-radius: 4px; width: 400px; padding: 8px 12px; color: #949ba4; font-size: 14px; }
.select .caret { position: absolute; right: 12px; top: 6px; color: #dbdee1; }
.select-options { font-size: 11px; color: #6d6f78; margin-top: 4px; }
.select.disabled { opacity: .5; }
.action { display: flex; gap: 10px; align-items: baseline; color: #949ba4; font-size: 14px; padding: 6px 16px 2px 28px; }
.action strong { color: #dbdee1; }
.action-icon { width: 28px; }
.modal-wrap { margin: 12px 16px 4px 72px; }
.modal-caption { font-size: 12px; color: #949ba4; margin-bottom: 4px; }
.modal { background: #313338; border: 1px solid #1e1f22; box-shadow: 0 8px 24px rgba(0,0,0,.5); border-radius: 8px; padding: 16px; max-width: 480px; }
.modal-title { font-size: 20px; font-weight: 600; color: #f2f3f5; margin-bottom: 12px; }
.modal-label { display: block; font-size: 12px; font-weight: 700; text-transform: uppercase; color: #b5bac1; margin: 8px 0 6px; }
.modal-input { background: #1e1f22; border-radius: 4px; padding: 10px; color: #dbdee1; white-space: pre-wrap; word-wrap: break-word; }
.modal-buttons { display: flex; justify-content: flex-end; gap: 8px; margin-top: 16px; }
.empty, .muted { color: #949ba4; }
.phases { list-style: none; padding: 0 20px; }
.phases li { margin: 18px 0 28px; }
.phases h2 { margin: 0 0 4px; font-size: 18px; }
.shot { width: 480px; border: 1px solid #1e1f22; border-radius: 6px; margin-top: 8px; }
`;
